// The browser and the Rust terminal client on one server: messages both
// ways, and one identity moved between them with a profile file, both ways
// (each import is a new device of the same user, which enters the rooms'
// groups and reads what is sent from then on).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as t from './harness.mjs'

let server, browser, home
before(async () => {
  server = await t.startServer()
  browser = await t.launch()
  home = mkdtempSync(join(tmpdir(), 'e2ee-cli-'))
})
after(async () => {
  await browser?.close()
  await server?.stop()
  rmSync(home, { recursive: true, force: true })
})

test('the Rust client and the browser read each other, and share identities', async () => {
  const alice = await t.openPage(browser, server.base)
  await t.createAccount(alice, 'alice')
  const roomId = await t.createRoom(alice, 'Bridge')

  const bob = join(home, 'bob')
  await t.cli(bob, server.ws, 'keygen', '--user', 'bob', '--encrypt')
  await t.cli(bob, server.ws, 'register')
  await t.cli(bob, server.ws, 'join', roomId)
  await t.cli(bob, server.ws, 'send', roomId, 'hello from rust')
  await t.seeMessage(alice, 'hello from rust')
  await t.send(alice, 'hello from the browser')
  const history = await t.cli(bob, server.ws, 'history', roomId)
  assert.match(history, /alice.*hello from the browser/)
  assert.match(history, /bob.*hello from rust/)

  // Browser -> terminal: alice's exported profile works in the CLI.
  const file = join(home, 'alice.json')
  const [download] = await Promise.all([alice.waitForEvent('download'), alice.click('#export')])
  await download.saveAs(file)
  const aliceCli = join(home, 'alice')
  const imported = await t.cli(aliceCli, server.ws, 'import-profile', file)
  const fp = (await alice.textContent('#sidebar .fp')).trim()
  assert.ok(imported.includes(fp), `${imported} lacks ${fp}`)
  await t.cli(aliceCli, server.ws, 'join', roomId)
  await t.cli(aliceCli, server.ws, 'send', roomId, 'alice, from her terminal')
  await t.seeMessage(alice, 'alice, from her terminal')
  assert.equal(await alice.getAttribute('#timeline li.msg:last-child', 'class'), 'msg mine')

  // Terminal -> browser: bob's CLI profile imported in a new browser.
  const bobFile = join(home, 'bob.json')
  await t.cli(bob, server.ws, 'export-profile', bobFile)
  const bobPage = await t.openPage(browser, server.base)
  await bobPage.setInputFiles('#import [name=file]', bobFile)
  await t.wrongThenRightPassphrase(bobPage, '#import')
  assert.equal(await bobPage.textContent('#me'), 'bob')
  await bobPage.click(`#room-list [data-room="${roomId}"]`)
  // Alice's page names bob's new device once it is in the group (his
  // terminal's was the first).
  await alice.waitForFunction(() => [...document.querySelectorAll('#timeline li.recipient')]
    .filter((e) => e.textContent.includes('New device in this room: bob')).length === 2)
  await t.send(alice, 'to both of bob\'s devices')
  await t.seeMessage(bobPage, 'to both of bob\'s devices')
  assert.match(await t.cli(bob, server.ws, 'history', roomId), /to both of bob's devices/)
  assert.deepEqual([...alice.problems, ...bobPage.problems], [])
})

// Issue 20 item 17: importing a file for a name this browser already holds
// with other keys asks first; declining keeps the stored profile.
test('importing over a stored profile of the same name asks first', async () => {
  const page = await t.openPage(browser, server.base)
  await t.createAccount(page, 'frank')
  const other = join(home, 'frank')
  await t.cli(other, server.ws, 'keygen', '--user', 'frank', '--encrypt')
  const file = join(home, 'frank.json')
  await t.cli(other, server.ws, 'export-profile', file)
  await page.reload()
  const asked = []
  page.once('dialog', (d) => { asked.push(d.message()); d.dismiss() })
  await page.setInputFiles('#import [name=file]', file)
  await page.fill('#import [name=passphrase]', t.PASSPHRASE)
  await page.click('#import button[type=submit]')
  await page.waitForSelector('#welcome-status.error >> text=Nothing was imported')
  assert.match(asked[0], /already holds other keys for frank/)
  // The stored profile still unlocks and logs in.
  await page.fill('#unlock [name=passphrase]', t.PASSPHRASE)
  await page.click('#unlock button[type=submit]')
  await t.online(page)
})
