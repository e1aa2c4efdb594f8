// Two browsers (separate contexts: separate IndexedDB) register, meet in a
// room (its MLS group) and talk both ways through a real server; the page's
// CSP holds; rooms, passwords, unread counts, owner tools and the phone
// layout work as people use them.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import * as t from './harness.mjs'

let server, browser
before(async () => { server = await t.startServer(); browser = await t.launch() })
after(async () => { await browser?.close(); await server?.stop() })

test('two browsers register, create and join a room, and exchange messages both ways', async () => {
  const [alice, bob] = await t.twoInRoom(browser, server.base, ['alice', 'bob'], 'General')

  // Alice sees bob join, with his fingerprint, online.
  const bobFp = await bob.textContent('#sidebar .fp')
  await alice.waitForSelector(`#timeline li.sys >> text=bob joined (fingerprint ${bobFp}).`)
  await alice.waitForSelector('#member-list li.member.online[data-member=bob] code.fp')
  assert.equal(await alice.textContent('#member-list li[data-member=bob] code.fp'), bobFp)
  // Before her first message after bob's device entered the group, alice
  // was told whose device it is.
  const notice = await alice.waitForSelector('#timeline li.recipient >> text=New device in this room: bob')
  assert.ok((await notice.textContent()).includes(bobFp))

  await t.send(alice, 'hello bob')
  await t.seeMessage(bob, 'hello bob')
  await t.send(bob, 'hi alice ✓')
  await t.seeMessage(alice, 'hi alice ✓')

  // What the sender typed is what the reader sees, escaped: no control
  // character reaches the page raw, and nothing is parsed as HTML.
  await bob.fill('#message', 'line one\u202e <b>not bold</b> \u001b[2K')
  await bob.press('#message', 'Enter')
  await alice.waitForFunction(() => [...document.querySelectorAll('#timeline .text')].some((e) => e.textContent.startsWith('line one\\u{202e}')))
  assert.equal(await alice.$('#timeline b'), null)
  // Bob's messages show his own clock (sent_at), in order.
  assert.deepEqual(await t.timelineTexts(alice), ['hello bob', 'hi alice ✓', 'line one\\u{202e} <b>not bold</b> \\u{1b}[2K'])
  assert.deepEqual(alice.problems, [])
  assert.deepEqual(bob.problems, [])
})

test('the Content-Security-Policy blocks injected script and other hosts', async () => {
  const page = await t.openPage(browser, server.base)
  const result = await page.evaluate(async () => {
    const violations = []
    document.addEventListener('securitypolicyviolation', (e) => violations.push(e.violatedDirective))
    document.body.insertAdjacentHTML('beforeend', '<img src="data:," onerror="window.pwned = 1" onload="window.pwned = 1">')
    const s = document.createElement('script')
    s.textContent = 'window.pwned = 2'
    document.body.append(s)
    let fetched = 'blocked'
    try { await fetch('http://127.0.0.2:9/'); fetched = 'reached' } catch {}
    await new Promise((resolve) => setTimeout(resolve, 300))
    return { pwned: window.pwned ?? null, violations, fetched }
  })
  assert.equal(result.pwned, null)
  assert.equal(result.fetched, 'blocked')
  assert.ok(result.violations.includes('script-src-attr') || result.violations.includes('script-src'), JSON.stringify(result))
  assert.ok(result.violations.includes('connect-src'), JSON.stringify(result))
})

test('hidden and password rooms, unread counts and wrong passwords', async () => {
  const carol = await t.openPage(browser, server.base)
  const dave = await t.openPage(browser, server.base)
  await t.createAccount(carol, 'carol')
  await t.createAccount(dave, 'dave')
  const secret = await t.createRoom(carol, 'Secret', { password: 'hunter22', hidden: true })
  const lobby = await t.createRoom(carol, 'Lobby')

  // The hidden room is not listed to dave; the public one is.
  await dave.click('#browse')
  await dave.waitForSelector(`#directory [data-join="${lobby}"]`)
  assert.equal(await dave.$(`#directory [data-join="${secret}"]`), null)

  // A wrong password says so; the right one gets in.
  await t.joinRoom(dave, lobby)
  await t.openForms(dave)
  await dave.fill('#join-room [name=room_id]', secret)
  await dave.fill('#join-room [name=password]', 'wrong')
  await dave.click('#join-room button[type=submit]')
  await dave.waitForSelector('#notices .notice.error >> text=Wrong room password.')
  await dave.fill('#join-room [name=password]', 'hunter22')
  await dave.click('#join-room button[type=submit]')
  await dave.waitForFunction((id) => document.querySelector('#room:not([hidden]) #room-id')?.textContent === id, secret)

  // Dave reads Secret; messages in Lobby count as unread there.
  await carol.click(`#room-list [data-room="${lobby}"]`)
  await t.send(carol, 'one')
  await t.send(carol, 'two')
  await dave.waitForSelector(`#room-list [data-room="${lobby}"] .unread >> text=2`)
  await dave.click(`#room-list [data-room="${lobby}"]`)
  await t.seeMessage(dave, 'two')
  assert.equal(await dave.$(`#room-list [data-room="${lobby}"] .unread`), null)

  // Leaving asks first, then the room is gone and the others are told.
  dave.once('dialog', (d) => d.accept())
  await dave.click('#leave')
  await dave.waitForSelector(`#room-list [data-room="${lobby}"]`, { state: 'detached' })
  await carol.waitForSelector('#timeline li.sys >> text=dave left.')
})

test('owner operations: kick, ban, unban, rename, set password, delete', async () => {
  const [erin, fred, roomId] = await t.twoInRoom(browser, server.base, ['erin', 'fred'], 'Workshop')
  await erin.waitForSelector('#member-list li[data-member=fred]')

  // Fred is not the owner: he has no owner tools.
  assert.equal(await fred.isVisible('#owner-tools'), false)

  await erin.fill('#owner-rename [name=name]', 'Workshop 2')
  await erin.click('#owner-rename button[type=submit]')
  await fred.waitForFunction(() => document.querySelector('#room-title').textContent === 'Workshop 2')
  await fred.waitForSelector('#timeline li.sys >> text=renamed from "Workshop" to "Workshop 2"')

  await erin.click('#member-list li[data-member=fred] button >> text=Kick')
  await fred.waitForSelector('#notices .notice >> text=You were kicked from "Workshop 2".')
  assert.equal(await fred.$(`#room-list [data-room="${roomId}"]`), null)
  await erin.waitForSelector('#timeline li.sys >> text=fred was kicked.')

  await t.joinRoom(fred, roomId)
  await erin.fill('#owner-user [name=username]', 'fred')
  await erin.click('#owner-ban')
  await fred.waitForSelector('#notices .notice >> text=You were banned from "Workshop 2".')
  await t.openForms(fred)
  await fred.fill('#join-room [name=room_id]', roomId)
  await fred.click('#join-room button[type=submit]')
  await fred.waitForSelector('#notices .notice.error >> text=You are banned from that room.')

  // Unknown targets get the server's answer, in words.
  await erin.fill('#owner-user [name=username]', 'nobody-here')
  await erin.click('#owner-unban')
  await erin.waitForSelector('#notices .notice.error >> text=There is no user with that name on this server.')
  await erin.fill('#owner-user [name=username]', 'fred')
  await erin.click('#owner-unban')
  await erin.waitForSelector('#notices .notice >> text=fred: unban done.')

  await erin.fill('#owner-password [name=password]', 'open sesame')
  await erin.click('#owner-password button[type=submit]')
  await erin.waitForSelector('#room-info >> text=password')
  await fred.fill('#join-room [name=password]', 'open sesame')
  await fred.click('#join-room button[type=submit]')
  await fred.waitForFunction((id) => document.querySelector('#room:not([hidden]) #room-id')?.textContent === id, roomId)

  erin.once('dialog', (d) => d.accept())
  await erin.click('#owner-delete')
  await fred.waitForSelector('#notices .notice >> text=The room "Workshop 2" was deleted.')
  assert.equal(await fred.$(`#room-list [data-room="${roomId}"]`), null)
  assert.equal(await erin.$(`#room-list [data-room="${roomId}"]`), null)
  assert.deepEqual([...erin.problems, ...fred.problems], [])
})

test('at phone width, rooms and members are panels, and the keyboard alone gets around', async () => {
  const page = await t.openPage(browser, server.base, { viewport: { width: 390, height: 780 }, isMobile: true, hasTouch: true })
  await t.createAccount(page, 'gina')
  // With no room open, the rooms panel is the screen.
  assert.equal(await page.isVisible('#sidebar'), true)
  await t.createRoom(page, 'Alpha')
  await page.click('#show-rooms')
  await t.createRoom(page, 'Beta')
  // A room open: the conversation fills the screen; panels open on demand.
  assert.equal(await page.isVisible('#sidebar'), false)
  assert.equal(await page.isVisible('#members'), false)
  await page.click('#show-members')
  await page.waitForSelector('#member-list li[data-member=gina]')
  assert.equal(await page.isVisible('#members'), true)
  await page.keyboard.press('Escape')
  assert.equal(await page.isVisible('#members'), false)
  // Alt+Up/Down moves between rooms and leaves the cursor in the message box.
  await page.keyboard.press('Alt+ArrowUp')
  await page.waitForFunction(() => document.querySelector('#room-title').textContent === 'Alpha')
  assert.equal(await page.evaluate(() => document.activeElement.id), 'message')
  await page.keyboard.type('typed without a mouse')
  await page.keyboard.press('Enter')
  await t.seeMessage(page, 'typed without a mouse')
  const width = await page.evaluate(() => document.documentElement.scrollWidth)
  assert.ok(width <= 390, `the page scrolls sideways: ${width}px`)
})
