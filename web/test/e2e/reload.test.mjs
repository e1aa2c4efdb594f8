// The profile survives a reload (unlocked with its passphrase), messages
// sent meanwhile are caught up, unread counts show where they went, and a
// server restart is ridden out by reconnecting with backoff.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import * as t from './harness.mjs'

let server, browser
before(async () => { server = await t.startServer(); browser = await t.launch() })
after(async () => { await browser?.close(); await server?.stop() })

test('a reload keeps the profile and catches up; a restart reconnects', async () => {
  const alice = await t.openPage(browser, server.base)
  const bob = await t.openPage(browser, server.base)
  await t.createAccount(alice, 'alice')
  await t.createAccount(bob, 'bob')
  const main = await t.createRoom(alice, 'Main')
  const side = await t.createRoom(alice, 'Side')
  await t.joinRoom(bob, side)
  await t.joinRoom(bob, main)
  await t.send(bob, 'before the reload')
  await alice.click(`#room-list [data-room="${main}"]`)
  await t.seeMessage(alice, 'before the reload')
  // Her read mark is written to IndexedDB just after the message shows; a
  // reload before that write lands would count the message unread again.
  await alice.waitForFunction((room) => new Promise((resolve) => {
    const req = indexedDB.open('e2ee-chat')
    req.onsuccess = () => {
      const get = req.result.transaction('kv').objectStore('kv').get('read/alice')
      get.onsuccess = () => resolve((get.result?.get(room) || 0) >= 1)
    }
  }), main)

  // Alice reloads; while the page waits for her passphrase, bob talks.
  await alice.reload()
  await alice.waitForSelector('#unlock')
  await t.send(bob, 'while you were away 1')
  await t.send(bob, 'while you were away 2')
  await bob.click(`#room-list [data-room="${side}"]`)
  await t.send(bob, 'over here too')

  await t.wrongThenRightPassphrase(alice, '#unlock')
  await alice.waitForSelector(`#room-list [data-room="${main}"] .unread >> text=2`)
  await alice.waitForSelector(`#room-list [data-room="${side}"] .unread >> text=1`)
  await alice.click(`#room-list [data-room="${main}"]`)
  await t.seeMessage(alice, 'while you were away 2')
  assert.deepEqual(await t.timelineTexts(alice), ['before the reload', 'while you were away 1', 'while you were away 2'])
  assert.equal(await alice.$(`#room-list [data-room="${main}"] .unread`), null)

  // The server restarts on the same store and port: both pages reconnect
  // by themselves, log in again and go on, with nothing shown twice.
  // What alice sends meanwhile waits, and goes once she is back.
  server = await t.restartWhileWriting(server, alice, 'written while offline', [alice, bob])
  await bob.click(`#room-list [data-room="${main}"]`)
  await t.seeMessage(bob, 'written while offline')
  await t.send(bob, 'after the restart')
  await t.seeMessage(alice, 'after the restart')
  const expected = ['before the reload', 'while you were away 1', 'while you were away 2', 'written while offline', 'after the restart']
  assert.deepEqual(await t.timelineTexts(alice), expected)
  assert.deepEqual(await t.timelineTexts(bob), expected)
  assert.deepEqual([...alice.problems.filter((p) => !/WebSocket|ERR_CONNECTION_REFUSED/.test(p)), ...bob.problems.filter((p) => !/WebSocket|ERR_CONNECTION_REFUSED/.test(p))], [])
})

test('after a reload the timeline is what this browser read, from its own store', async () => {
  const page = await t.openPage(browser, server.base)
  await t.createAccount(page, 'paula')
  await t.createRoom(page, 'Long')
  for (let i = 1; i <= 55; i++) {
    await page.fill('#message', `note ${i}`)
    await page.press('#message', 'Enter')
  }
  await t.seeMessage(page, 'note 55')
  await page.reload()
  await page.fill('#unlock [name=passphrase]', t.PASSPHRASE)
  await page.click('#unlock button[type=submit]')
  await t.online(page)
  await page.click('#room-list .roombtn')
  await t.seeMessage(page, 'note 55')
  // Every text, in order: forward secrecy means the server's copies could
  // not be read again, so there is nothing older to page back to.
  assert.deepEqual(await t.timelineTexts(page), Array.from({ length: 55 }, (_, i) => `note ${i + 1}`))
  assert.equal(await page.$('#older'), null)
})
