// Makes the README's screenshots (docs/web-desktop.png, docs/web-phone.png):
// a real server (protocol v3, the default), two browsers and a short
// conversation. Run after a build:
//   cargo build --bins && cd web && npm run screenshots
import * as t from '../test/e2e/harness.mjs'

const out = new URL('../../docs/', import.meta.url).pathname
const server = await t.startServer()
const browser = await t.launch()
try {
  const alice = await t.openPage(browser, server.base, { viewport: { width: 1280, height: 720 } })
  const bob = await t.openPage(browser, server.base, { viewport: { width: 390, height: 780 }, isMobile: true, hasTouch: true })
  await t.createAccount(alice, 'alice')
  await t.createAccount(bob, 'bob')
  await t.createRoom(alice, 'Design review', { password: 'open sesame' })
  const general = await t.createRoom(alice, 'General')
  await t.createRoom(alice, 'Release 1.0', { hidden: true })
  await alice.click(`#room-list [data-room="${general}"]`)
  await t.joinRoom(bob, general)
  // Bob's device enters the room's group; alice's page names it.
  await alice.waitForSelector('#timeline li.recipient >> text=New device in this room: bob')
  await t.send(alice, 'Morning! The new build is up on staging.')
  await t.send(bob, 'Great, checking it now. Is the key-change warning in?')
  await t.send(alice, 'Yes: and every new device of anyone here is named, like yours above.')
  await t.send(bob, 'Perfect. Only our devices can read this; the server just orders and relays it.')
  await t.seeMessage(alice, 'Perfect. Only our devices can read this; the server just orders and relays it.')
  await alice.screenshot({ path: out + 'web-desktop.png' })
  await bob.screenshot({ path: out + 'web-phone.png' })
  console.log('wrote docs/web-desktop.png and docs/web-phone.png')
} finally {
  await browser.close()
  await server.stop()
}
