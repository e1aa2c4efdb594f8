// The page with rooms as MLS groups, ts-mls in the
// browser): two browsers and the terminal client (openmls) in one room.
// Register, create, join by external commit, talk every way, new devices
// named, a kick followed by the removal commit, and a reload that shows the
// history from this browser's store and catches up from the server.
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
  home = mkdtempSync(join(tmpdir(), 'e2ee-web3-'))
})
after(async () => {
  await browser?.close()
  await server?.stop()
  rmSync(home, { recursive: true, force: true })
})

const cli = (dir, ...args) => t.cli(dir, server.ws, ...args)

test('two browsers and the terminal client in one MLS room', async () => {
  const [alice, bob, roomId] = await t.twoInRoom(browser, server.base, ['alice', 'bob'], 'Lobby')
  assert.match(roomId, /^r-[0-9a-f]{32}$/)
  // Bob's device enters by external commit: Alice's page names it. (A
  // message sent before that commit is for an epoch his device never had.)
  await alice.waitForSelector('#timeline li.recipient >> text=New device in this room: bob')
  await t.send(alice, 'hello bob')
  await t.seeMessage(bob, 'hello bob')
  await t.send(bob, 'hi alice')
  await t.seeMessage(alice, 'hi alice')

  // The terminal client joins (openmls) and reads; the browsers read it.
  const carol = join(home, 'carol')
  await t.cli(carol, server.ws, 'keygen', '--user', 'carol', '--encrypt')
  await cli(carol, 'register')
  await cli(carol, 'join', roomId)
  await cli(carol, 'send', roomId, 'hello from the terminal')
  await t.seeMessage(alice, 'hello from the terminal')
  await t.seeMessage(bob, 'hello from the terminal')
  await alice.waitForSelector('#timeline li.recipient >> text=New device in this room: carol')
  await t.send(alice, 'welcome carol')
  assert.match(await cli(carol, 'history', roomId), /alice: welcome carol/)

  // Alice kicks carol: a browser commits the removal of her leaf, and the
  // room goes on without it.
  await alice.click('#member-list li[data-member=carol] button >> text=Kick')
  await alice.waitForSelector('#timeline li.sys >> text=carol was kicked.')
  await t.send(bob, 'just the two of us')
  await t.seeMessage(alice, 'just the two of us')
  await assert.rejects(cli(carol, 'send', roomId, 'still here?'))

  // At rest, bob's device key, group state and texts are sealed: IndexedDB
  // holds no plaintext of them.
  const atRest = await bob.evaluate(() => new Promise((resolve) => {
    const req = indexedDB.open('e2ee-chat')
    req.onsuccess = () => {
      const all = req.result.transaction('kv').objectStore('kv').getAll()
      all.onsuccess = () => resolve(JSON.stringify(all.result, (k, v) => v instanceof Uint8Array ? Array.from(v) : v))
    }
  }))
  assert.ok(!atRest.includes('hello bob') && !atRest.includes('signKey') && !atRest.includes('"state"'), atRest.slice(0, 500))

  // Bob reloads: what his browser read shows from its store, and what he
  // missed comes from the server.
  await bob.reload()
  await bob.waitForSelector('#unlock')
  await t.send(alice, 'while you reloaded')
  await t.wrongThenRightPassphrase(bob, '#unlock')
  await bob.click(`#room-list [data-room="${roomId}"]`)
  await t.seeMessage(bob, 'while you reloaded')
  const texts = await t.timelineTexts(bob)
  for (const text of ['hello bob', 'hi alice', 'hello from the terminal', 'just the two of us', 'while you reloaded']) {
    assert.ok(texts.includes(text), `${text} in ${texts}`)
  }

  // The server restarts on the same store and port: what alice writes
  // meanwhile waits, and goes (once) when she is back.
  server = await t.restartWhileWriting(server, alice, 'written while offline', [alice, bob])
  await t.seeMessage(bob, 'written while offline')
  await t.send(bob, 'after the restart')
  await t.seeMessage(alice, 'after the restart')
  assert.equal((await t.timelineTexts(bob)).filter((x) => x === 'written while offline').length, 1)
  const quiet = (page) => page.problems.filter((p) => !/WebSocket|ERR_CONNECTION_REFUSED/.test(p))
  assert.deepEqual([...quiet(alice), ...quiet(bob)], [])
})
