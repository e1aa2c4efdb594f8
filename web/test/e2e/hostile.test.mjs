// A hostile server against the page (issue 20, items 1 and 2). The server
// here is the real one behind a man in the middle: Playwright routes the
// page's websocket and the test rewrites what the server says, as a server
// that wants to read messages would.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { encode, decode } from 'cborg'
import * as t from './harness.mjs'

let server, browser
before(async () => { server = await t.startServer(); browser = await t.launch() })
after(async () => { await browser?.close(); await server?.stop() })

// Routes the page's websocket through `rewrite(frame)` (server to page) and
// records what the page sends. `push(frame)` sends the page a frame the
// server never sent; `drop()` cuts the connection so the page reconnects.
async function manInTheMiddle (page, rewrite) {
  const mitm = { sent: [], routes: [] }
  await page.routeWebSocket(/\/ws$/, (ws) => {
    const server = ws.connectToServer()
    mitm.routes.push(ws)
    ws.onMessage((m) => { mitm.sent.push(decode(new Uint8Array(m))); server.send(m) })
    server.onMessage((m) => {
      const frame = rewrite(decode(new Uint8Array(m)))
      if (frame) ws.send(Buffer.from(encode(frame)))
    })
  })
  mitm.push = (frame) => mitm.routes.at(-1).send(Buffer.from(encode(frame)))
  mitm.drop = () => mitm.routes.at(-1).close({ code: 1012, reason: 'restart' })
  return mitm
}

async function serverKeys () {
  const pair = (name) => crypto.subtle.generateKey(
    { name, modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' },
    true, name === 'RSA-PSS' ? ['sign', 'verify'] : ['encrypt', 'decrypt'])
  const spki = async (k) => new Uint8Array(await crypto.subtle.exportKey('spki', k.publicKey))
  return { sign_key: await spki(await pair('RSA-PSS')), enc_key: await spki(await pair('RSA-OAEP')) }
}

async function blocked (page, roomId, user) {
  await page.click(`#room-list [data-room="${roomId}"]`)
  await page.waitForSelector(`#banners form.keychange[data-user=${user}]`)
  assert.equal(await page.isDisabled('#message'), true)
}

test('a key change in one room is not lifted by another room', async () => {
  const evil = await serverKeys()
  let secret = null
  let genuineBob = null
  const swap = (member) => member.username === 'bob' ? { ...member, ...evil } : member
  const alice = await t.openPage(browser, server.base)
  const mitm = await manInTheMiddle(alice, (f) => {
    if (f.type === 'member_joined' && f.member?.username === 'bob' && f.room_id !== secret) genuineBob = f.member
    if (secret === null || f.room_id !== secret) return f
    if (f.type === 'member_joined') return { ...f, member: swap(f.member) }
    if (Array.isArray(f.members)) return { ...f, members: f.members.map(swap) }
    return f
  })
  const bob = await t.openPage(browser, server.base)
  await t.createAccount(alice, 'alice')
  await t.createAccount(bob, 'bob')
  // bob is pinned with his real keys in the public room first.
  const pub = await t.createRoom(alice, 'Public')
  await t.joinRoom(bob, pub)
  await alice.waitForSelector('#member-list li[data-member=bob]')
  const realFp = (await alice.textContent('#member-list li[data-member=bob] code.fp')).trim()
  // In the secret room the server serves its own keys for bob.
  secret = await t.createRoom(alice, 'Secret')
  await t.joinRoom(bob, secret)
  await blocked(alice, secret, 'bob')

  // The server re-announces the real bob in the public room, and the page
  // re-reads every room's members after a reconnect: neither lifts the
  // secret room's block.
  assert.ok(genuineBob)
  mitm.push({ type: 'member_joined', room_id: pub, member: genuineBob })
  await alice.click(`#room-list [data-room="${pub}"]`)
  await alice.waitForFunction(() => [...document.querySelectorAll('#timeline li.sys')]
    .filter((e) => e.textContent === 'bob joined.').length === 2)
  mitm.drop()
  await alice.waitForSelector('#status:not([data-state=online])')
  await t.online(alice)
  await blocked(alice, secret, 'bob')
  await alice.click(`#room-list [data-room="${pub}"]`)
  await alice.waitForSelector('#banners form.keychange', { state: 'detached' })
  await blocked(alice, secret, 'bob')

  // Confirming bob's real fingerprint is not confirming what this room serves.
  await alice.fill('#banners [name=fingerprint]', realFp)
  await alice.click('#banners button[type=submit]')
  await alice.waitForSelector('#notices .notice.error >> text=not the fingerprint')
  await blocked(alice, secret, 'bob')

  // The public room works, wrapped to the pinned keys; nothing went to the
  // secret room.
  await alice.click(`#room-list [data-room="${pub}"]`)
  await t.send(alice, 'hello public')
  await bob.click(`#room-list [data-room="${pub}"]`)
  await t.seeMessage(bob, 'hello public')
  assert.deepEqual(mitm.sent.filter((f) => f.type === 'send' && f.room_id === secret), [])
  for (const f of mitm.sent.filter((f) => f.type === 'send')) {
    assert.deepEqual(Object.keys(f.keys).sort(), ['alice', 'bob'])
  }
  assert.deepEqual(alice.problems, [])
})

test('another room\'s message in a history reply is shown as failed', async () => {
  let captured = null
  let target = null
  let injected = false
  const carol = await t.openPage(browser, server.base)
  await manInTheMiddle(carol, (f) => {
    if (f.type === 'message' && !captured) captured = f
    if (f.type === 'history' && target && f.room_id === target && captured && !injected) {
      injected = true
      const { type, ...entry } = captured
      return { ...f, messages: [...f.messages, entry] }
    }
    return f
  })
  const dave = await t.openPage(browser, server.base)
  await t.createAccount(carol, 'carol')
  await t.createAccount(dave, 'dave')
  const secret = await t.createRoom(carol, 'Secret plans')
  await t.joinRoom(dave, secret)
  await t.send(dave, 'the launch code is 4711')
  await t.seeMessage(carol, 'the launch code is 4711')
  assert.equal(captured.room_id, secret)

  // When carol opens the lobby, its history holds the secret room's message.
  target = await t.createRoom(dave, 'Lobby')
  await t.joinRoom(carol, target)
  await carol.waitForSelector('#timeline li.failed >> text=belongs to another room')
  assert.ok(injected)
  await t.send(dave, 'welcome')
  await t.seeMessage(carol, 'welcome')
  assert.deepEqual(await t.timelineTexts(carol), ['welcome'])
})
