// Protocol v3 across the two MLS libraries: the page's layer (src/mls.js,
// ts-mls, in Node) and the terminal client (openmls) in one room on a real
// v3 server. Each reads what the other sends, across a commit made by each
// of them, and a terminal device joins after the ts-mls device committed
// an update: its external commit starts from a GroupInfo ts-mls signed.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as t from './harness.mjs'
import { Device3 } from './device.mjs'

let server, home
before(async () => {
  server = await t.startServer()
  home = mkdtempSync(join(tmpdir(), 'e2ee-interop3-'))
})
after(async () => {
  await server?.stop()
  rmSync(home, { recursive: true, force: true })
})

const cli = (dir, ...args) => t.cli(dir, server.ws, ...args)

test('ts-mls and openmls devices talk in one room, through commits by each', async () => {
  const bob = join(home, 'bob')
  const carol = join(home, 'carol')
  for (const [dir, user] of [[bob, 'bob'], [carol, 'carol']]) {
    await t.cli(dir, server.ws, 'keygen', '--user', user, '--encrypt')
    await cli(dir, 'register')
  }
  const created = await cli(bob, 'create', 'Bridge')
  const roomId = created.match(/\((r-[0-9a-f]{32})\)/)[1]

  // The ts-mls device enters by external commit from openmls's GroupInfo.
  const alice = await Device3.open(server.ws, 'alice')
  await alice.register()
  await alice.login()
  await alice.join(roomId)
  await alice.send('hello from ts-mls')
  assert.match(await cli(bob, 'history', 'Bridge'), /alice: hello from ts-mls/)

  await cli(bob, 'send', 'Bridge', 'hello from openmls')
  await alice.sync()
  assert.deepEqual(alice.read.at(-1), { seq: alice.applied, sender: 'bob', senderOk: true, text: 'hello from openmls' })

  // A commit by ts-mls, which openmls applies before its next message.
  const before = (await alice.ok({ type: 'group_state', room_id: roomId })).epoch
  const updated = await alice.commit()
  assert.equal(updated.epoch, before + 1)
  await cli(bob, 'send', 'Bridge', 'after your update')
  await alice.sync()
  assert.equal(alice.read.at(-1).text, 'after your update')

  // A terminal device joins from the GroupInfo ts-mls signed; both read it.
  await cli(carol, 'join', 'Bridge')
  await cli(carol, 'send', 'Bridge', 'carol joined after an update by ts-mls')
  await alice.sync()
  assert.equal(alice.read.at(-1).text, 'carol joined after an update by ts-mls')
  assert.ok(alice.read.every((r) => r.senderOk))
  assert.match(await cli(bob, 'history', 'Bridge'), /carol: carol joined after an update by ts-mls/)

  // Carol leaves; openmls (bob's next send) commits her removal, which
  // ts-mls applies; and ts-mls's message after it reads on both sides.
  await cli(carol, 'leave', 'Bridge')
  await cli(bob, 'send', 'Bridge', 'carol is gone')
  await alice.sync()
  assert.equal(alice.read.at(-1).text, 'carol is gone')
  await alice.send('bye from ts-mls')
  assert.match(await cli(bob, 'history', 'Bridge'), /alice: bye from ts-mls/)
  alice.close()
})
