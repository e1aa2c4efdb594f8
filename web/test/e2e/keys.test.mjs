// The page's section 7 duties against a hostile server (a
// man in the middle rewriting what the real server says, as in
// hostile.test.mjs) and with a second device of one user:
// - a member served with another identity key in one room blocks that room
//   only, until the user confirms the new fingerprint;
// - a device whose certificate is not signed by the pinned identity key
//   blocks the room it is in;
// - the same profile imported into another browser is a second device,
//   which the others' pages name as it enters.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { encode, decode } from 'cborg'
import * as t from './harness.mjs'

let server, browser, home
before(async () => {
  server = await t.startServer()
  browser = await t.launch()
  home = mkdtempSync(join(tmpdir(), 'e2ee-web3k-'))
})
after(async () => {
  await browser?.close()
  await server?.stop()
  rmSync(home, { recursive: true, force: true })
})

// Routes the page's websocket through `rewrite(frame)` (server to page).
async function manInTheMiddle (page, rewrite) {
  await page.routeWebSocket(/\/ws$/, (ws) => {
    const server = ws.connectToServer()
    ws.onMessage((m) => server.send(m))
    server.onMessage((m) => {
      const frame = rewrite(decode(new Uint8Array(m)))
      if (frame) ws.send(Buffer.from(encode(frame)))
    })
  })
}

async function evilIdentity () {
  const pair = await crypto.subtle.generateKey(
    { name: 'RSA-PSS', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' }, true, ['sign', 'verify'])
  return new Uint8Array(await crypto.subtle.exportKey('spki', pair.publicKey))
}

// Serves `key` as `user`'s identity key in the frames `when(frame)` picks.
function swapKey (user, key, when) {
  const swap = (member) => member.username === user ? { ...member, identity_key: key } : member
  return (f) => {
    if (!when(f)) return f
    if (f.type === 'member_joined') return { ...f, member: swap(f.member) }
    if (Array.isArray(f.members)) return { ...f, members: f.members.map(swap) }
    return f
  }
}

test('a changed identity key blocks that room only, until confirmed', async () => {
  const evil = await evilIdentity()
  let secret = null
  const alice = await t.openPage(browser, server.base)
  await manInTheMiddle(alice, swapKey('bob', evil, (f) => secret !== null && f.room_id === secret))
  const bob = await t.openPage(browser, server.base)
  await t.createAccount(alice, 'alice')
  await t.createAccount(bob, 'bob')
  const pub = await t.createRoom(alice, 'Public')
  await t.joinRoom(bob, pub)
  await alice.waitForSelector('#timeline li.recipient >> text=New device in this room: bob')

  secret = await t.createRoom(alice, 'Secret')
  await t.joinRoom(bob, secret)
  await alice.click(`#room-list [data-room="${secret}"]`)
  await alice.waitForSelector('#banners form.keychange[data-user=bob]')
  assert.equal(await alice.isDisabled('#message'), true)

  // The public room is not blocked by what the secret room serves.
  await alice.click(`#room-list [data-room="${pub}"]`)
  await alice.waitForSelector('#message:not([disabled])')
  await t.send(alice, 'only in public')
  await bob.click(`#room-list [data-room="${pub}"]`)
  await t.seeMessage(bob, 'only in public')

  // A wrong fingerprint changes nothing; the served one lifts the block.
  await alice.click(`#room-list [data-room="${secret}"]`)
  const served = (await alice.textContent('#banners form.keychange[data-user=bob] code.newfp')).trim()
  await alice.fill('#banners form.keychange[data-user=bob] [name=fingerprint]', '00'.repeat(32))
  await alice.click('#banners form.keychange[data-user=bob] button[type=submit]')
  await alice.waitForSelector('#notices .notice >> text=That is not the fingerprint')
  await alice.fill('#banners form.keychange[data-user=bob] [name=fingerprint]', served)
  await alice.click('#banners form.keychange[data-user=bob] button[type=submit]')
  await alice.waitForSelector('#timeline li.sys >> text=You confirmed bob\'s new fingerprint.')
  await alice.waitForSelector('#message:not([disabled])')
})

test('a device not certified by the pinned identity key blocks its room', async () => {
  // The server serves its own key for dave from the start: alice pins it,
  // and dave's real device (certified by his real key) then fails.
  const evil = await evilIdentity()
  const alice = await t.openPage(browser, server.base)
  await manInTheMiddle(alice, swapKey('dave', evil, () => true))
  const dave = await t.openPage(browser, server.base)
  await t.createAccount(alice, 'carla')
  await t.createAccount(dave, 'dave')
  const room = await t.createRoom(alice, 'Forged')
  await t.joinRoom(dave, room)
  await alice.waitForSelector('#timeline li.warning >> text=Sending here is blocked: a device in this room fails its check')
  await alice.fill('#message', 'must not go')
  await alice.press('#message', 'Enter')
  await alice.waitForSelector('#notices .notice >> text=Not sent: a device in this room fails its check')
  assert.ok(!(await t.timelineTexts(dave)).includes('must not go'))
})

test('the same profile in a second browser is a second device, named to the others', async () => {
  const [erin, fred, roomId] = await t.twoInRoom(browser, server.base, ['erin', 'fred'], 'Devices')
  await erin.waitForSelector('#timeline li.recipient >> text=New device in this room: fred')
  const file = join(home, 'fred.json')
  const [download] = await Promise.all([fred.waitForEvent('download'), fred.click('#export')])
  await download.saveAs(file)
  const tablet = await t.openPage(browser, server.base)
  await tablet.setInputFiles('#import [name=file]', file)
  await t.wrongThenRightPassphrase(tablet, '#import')
  await tablet.click(`#room-list [data-room="${roomId}"]`)
  // Erin's page names fred's second device as its external commit lands.
  await erin.waitForFunction(() => [...document.querySelectorAll('#timeline li.recipient')]
    .filter((e) => e.textContent.startsWith('New device in this room: fred')).length === 2)
  await t.send(tablet, 'from fred\'s tablet')
  await t.seeMessage(erin, 'from fred\'s tablet')
  await t.seeMessage(fred, 'from fred\'s tablet')
  assert.deepEqual([...erin.problems, ...fred.problems, ...tablet.problems], [])
})

test('a browser without WebCrypto Ed25519 is told so plainly', async () => {
  const context = await browser.newContext()
  await context.addInitScript(() => {
    const generate = crypto.subtle.generateKey.bind(crypto.subtle)
    crypto.subtle.generateKey = (alg, ...rest) =>
      (alg === 'Ed25519' || alg?.name === 'Ed25519') ? Promise.reject(new DOMException('Unrecognized name', 'NotSupportedError')) : generate(alg, ...rest)
  })
  const page = await context.newPage()
  await page.goto(server.base + '/')
  await page.waitForSelector('#app[data-screen=unsupported]')
  assert.match(await page.textContent('#app'), /no Ed25519.*Chromium or Chrome 137 or later/)
  await context.close()
})
