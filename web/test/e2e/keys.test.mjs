// A known user's keys change under the reader: here the server's operator
// swaps bob's account for one with new keys, as a hostile server would. The
// page warns, shows the new messages as untrusted, refuses to send to the
// room, and trusts the new keys only after the user types the fingerprint
// they compared (a wrong one changes nothing).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { join } from 'node:path'
import * as t from './harness.mjs'

let server, browser
before(async () => { server = await t.startServer(); browser = await t.launch() })
after(async () => { await browser?.close(); await server?.stop() })

// What an operator with the database can do: forget bob's registered keys,
// so someone else can register "bob" and keep his memberships.
async function forgetUser (dir, username) {
  const script = 'import sqlite3, sys\n' +
    'db = sqlite3.connect(sys.argv[1])\n' +
    'db.execute("DELETE FROM users WHERE username = ?", (sys.argv[2],))\n' +
    'db.commit()\n'
  await promisify(execFile)('python3', ['-c', script, join(dir, 'chat.db'), username])
}

test('a key change shows the warning and needs the compared fingerprint', async () => {
  const [alice, bob, roomId] = await t.twoInRoom(browser, server.base, ['alice', 'bob'], 'Pinned')
  await t.send(bob, 'the real bob')
  await t.seeMessage(alice, 'the real bob')
  const oldFp = (await alice.textContent('#member-list li[data-member=bob] code.fp')).trim()

  await server.stop({ keep: true })
  await alice.waitForSelector('#status:not([data-state=online])')
  await forgetUser(server.dir, 'bob')
  server = await t.startServer({ dir: server.dir, port: server.port })

  const impostor = await t.openPage(browser, server.base)
  await t.createAccount(impostor, 'bob')
  const newFp = (await impostor.textContent('#sidebar .fp')).trim()
  // Restart once more, so the room starts with the new bob as a member
  // whichever reconnected first (a room that started while bob had no
  // account left him out).
  await server.stop({ keep: true })
  await impostor.waitForSelector('#status:not([data-state=online])')
  server = await t.startServer({ dir: server.dir, port: server.port })
  await t.online(impostor)
  assert.notEqual(newFp, oldFp)
  await impostor.click(`#room-list [data-room="${roomId}"]`)
  await t.send(impostor, 'trust me, I am bob')

  // The real bob's page, still open with the old keys, is refused and says so.
  await bob.waitForSelector('#status[data-state=refused]')
  await bob.waitForSelector('#notices .notice.error >> text=/There is no user|did not accept your login proof/')

  // Alice reconnects, re-reads the members and sees the change.
  await t.online(alice)
  const banner = await alice.waitForSelector('#banners form.keychange[data-user=bob]')
  assert.match(await banner.textContent(), /bob's keys changed/)
  assert.equal((await alice.textContent('#banners code.newfp')).trim(), newFp)
  assert.ok((await banner.textContent()).includes(oldFp))
  await alice.waitForSelector('#member-list li.changed[data-member=bob] >> text=keys changed')
  // The impostor's message is not shown as text, and alice cannot send.
  await alice.waitForSelector('#timeline li.failed >> text=untrusted')
  assert.deepEqual(await t.timelineTexts(alice), ['the real bob'])
  assert.equal(await alice.isDisabled('#message'), true)

  // A fingerprint that is not the one served changes nothing.
  await alice.fill('#banners [name=fingerprint]', oldFp)
  await alice.click('#banners button[type=submit]')
  await alice.waitForSelector('#notices .notice.error >> text=not the fingerprint')
  assert.ok(await alice.$('#banners form.keychange'))

  // The fingerprint bob read to her (spaces as shown) confirms the keys.
  await alice.fill('#banners [name=fingerprint]', newFp)
  await alice.click('#banners button[type=submit]')
  await alice.waitForSelector('#banners form.keychange', { state: 'detached' })
  await t.seeMessage(alice, 'trust me, I am bob')
  assert.equal(await alice.isDisabled('#message'), false)
  await t.send(alice, 'confirmed')
  await t.seeMessage(impostor, 'confirmed')

  // After a reload the new pin holds: no warning comes back.
  await alice.reload()
  await alice.fill('#unlock [name=passphrase]', t.PASSPHRASE)
  await alice.click('#unlock button[type=submit]')
  await t.online(alice)
  await alice.click(`#room-list [data-room="${roomId}"]`)
  await t.seeMessage(alice, 'confirmed')
  assert.equal(await alice.$('#banners form.keychange'), null)
})
