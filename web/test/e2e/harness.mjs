// What the browser tests share: a real server process on 127.0.0.1 with a
// fresh SQLite store, Debian's Chromium through playwright-core (never a
// downloaded browser), the Rust terminal client, and page helpers.
import { spawn, execFile } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { chromium } from 'playwright-core'

const ROOT = new URL('../../../', import.meta.url).pathname
export const SERVER_BIN = process.env.E2E_SERVER_BIN || join(ROOT, 'target/debug/e2ee-chat-server')
export const CLI_BIN = process.env.E2E_CLI_BIN || join(ROOT, 'target/debug/e2ee-chat')
export const CHROMIUM = process.env.CHAT_TEST_CHROMIUM || '/usr/bin/chromium'
export const PASSPHRASE = 'correct horse battery'

// Starts the server (on a free port, or `port` to restart one in place on
// the same store `dir`; `env` adds settings); resolves once it prints its
// address.
export async function startServer ({ dir = mkdtempSync(join(tmpdir(), 'e2ee-web-')), port = 0, env = {} } = {}) {
  const child = spawn(SERVER_BIN, [], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH,
      RUST_LOG: 'warn',
      CHAT__STORE__PATH: join(dir, 'chat.db'),
      CHAT__SERVER__PORT: String(port),
      CHAT__LIMITS__REGISTRATIONS_PER_IP_PER_HOUR: '1000',
      ...env
    },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  const addr = await new Promise((resolve, reject) => {
    let out = ''
    child.stdout.on('data', (d) => {
      out += d
      const m = out.match(/listening on (\S+)/)
      if (m) resolve(m[1])
    })
    child.on('exit', (code) => reject(new Error(`server exited with ${code}`)))
  })
  child.stdout.resume()
  return {
    base: `http://${addr}`,
    ws: `ws://${addr}/ws`,
    port: Number(addr.split(':').pop()),
    dir,
    // Stops the process; `keep` leaves the store for a restart.
    stop: async ({ keep = false } = {}) => {
      child.kill('SIGTERM')
      await new Promise((resolve) => child.exitCode !== null ? resolve() : child.on('exit', resolve))
      if (!keep) rmSync(dir, { recursive: true, force: true })
    }
  }
}

export function launch () {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync']
  })
}

// A page in a browser context of its own (its own IndexedDB), with every
// console error and page error collected: a CSP violation fails the test.
export async function openPage (browser, base, options = {}) {
  const context = await browser.newContext({ acceptDownloads: true, ...options })
  const page = await context.newPage()
  page.problems = []
  page.on('console', (m) => { if (m.type() === 'error') page.problems.push(m.text()) })
  page.on('pageerror', (e) => page.problems.push(String(e)))
  await page.goto(base + '/')
  return page
}

export async function createAccount (page, username) {
  await page.fill('#create [name=username]', username)
  await page.fill('#create [name=passphrase]', PASSPHRASE)
  await page.fill('#create [name=confirm]', PASSPHRASE)
  await page.click('#create button[type=submit]')
  await online(page)
}

// Two users, each in a browser context of their own; the first creates a
// room and the second joins it.
export async function twoInRoom (browser, base, [owner, guest], roomName) {
  const a = await openPage(browser, base)
  const b = await openPage(browser, base)
  await createAccount(a, owner)
  await createAccount(b, guest)
  const roomId = await createRoom(a, roomName)
  await joinRoom(b, roomId)
  return [a, b, roomId]
}

// Submits a passphrase form (#unlock or #import) with a wrong passphrase,
// checks that it says so, then with the right one, and waits to be online.
export async function wrongThenRightPassphrase (page, form) {
  await page.fill(`${form} [name=passphrase]`, 'not the passphrase')
  await page.click(`${form} button[type=submit]`)
  await page.waitForSelector('#welcome-status.error >> text=wrong passphrase')
  await page.fill(`${form} [name=passphrase]`, PASSPHRASE)
  await page.click(`${form} button[type=submit]`)
  await online(page)
}

export async function online (page) {
  await page.waitForSelector('#status[data-state=online]', { timeout: 30000 })
}

/**
 * Stops `server` (its store and port kept), has `writer` send `text` while
 * it is down (the page says the message waits), starts it again and waits
 * until every page of `pages` is back online. Returns the new server.
 */
export async function restartWhileWriting (server, writer, text, pages) {
  await server.stop({ keep: true })
  await writer.waitForSelector('#status:not([data-state=online])')
  await writer.fill('#message', text)
  await writer.press('#message', 'Enter')
  await writer.waitForSelector('#timeline li.sys >> text=will be sent when the connection is back')
  const restarted = await startServer({ dir: server.dir, port: server.port })
  for (const page of pages) await online(page)
  return restarted
}

export async function openForms (page) {
  await page.$eval('#sidebar details', (d) => { d.open = true })
}

export async function createRoom (page, name, { password, hidden } = {}) {
  await openForms(page)
  await page.fill('#create-room [name=name]', name)
  if (password) await page.fill('#create-room [name=password]', password)
  if (hidden) await page.check('#create-room [name=hidden]')
  await page.click('#create-room button[type=submit]')
  await page.waitForFunction((n) => document.querySelector('#room-title')?.textContent === n && document.querySelector('#room-id'), name)
    .catch(async (e) => { throw new Error(`${e.message}; page shows: ${await page.textContent('#notices')} | ${await page.textContent('#room-title')}`) })
  return page.textContent('#room-id')
}

export async function joinRoom (page, roomId, password) {
  await openForms(page)
  await page.fill('#join-room [name=room_id]', roomId)
  if (password) await page.fill('#join-room [name=password]', password)
  await page.click('#join-room button[type=submit]')
  await page.waitForFunction((id) => document.querySelector('#room:not([hidden]) #room-id')?.textContent === id, roomId)
}

export async function send (page, text) {
  await page.fill('#message', text)
  await page.press('#message', 'Enter')
  await seeMessage(page, text)
}

// Waits for a verified message with this text in the open room.
export async function seeMessage (page, text, timeout = 15000) {
  try {
    await page.waitForFunction((t) => [...document.querySelectorAll('#timeline li.msg .text')].some((e) => e.textContent === t), text, { timeout })
  } catch (e) {
    const shows = await page.evaluate(() => ['#status', '#room-title', '#notices', '#timeline'].map((s) => document.querySelector(s)?.innerText).join(' | '))
    throw new Error(`${e.message}: no message "${text}"; the page shows: ${shows}; problems: ${page.problems}`)
  }
}

export const timelineTexts = (page) => page.$$eval('#timeline li.msg .text', (els) => els.map((e) => e.textContent))

// Runs the Rust terminal client with a profile directory.
export async function cli (profileDir, server, ...args) {
  const { stdout } = await promisify(execFile)(CLI_BIN, ['--profile', profileDir, '--server', server, ...args], {
    env: { PATH: process.env.PATH, E2EE_CHAT_PASSPHRASE: PASSPHRASE }, timeout: 60000
  })
  return stdout
}
