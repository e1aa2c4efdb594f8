// @ts-check
// The chat screen: draws a Chat's state into the DOM and turns the user's
// clicks and keys into Chat calls. Everything from the network reaches the
// page through textContent (never innerHTML), escaped for display first.

import { escapeDisplay as esc, fingerprintDisplay } from './proto.js'
import { profileFile } from './welcome.js'
import { h } from './dom.js'

const time = (ms) => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
const full = (ms) => new Date(ms).toLocaleString()

export class ChatView {
  /**
   * @param {HTMLElement} root
   * @param {import('./chat.js').Chat} chat
   * @param {{onLock: () => void}} options
   */
  constructor (root, chat, { onLock }) {
    this.root = root
    this.chat = chat
    this.onLock = onLock
    this.panel = null // 'rooms' | 'members' on phones
    /** @type {Map<string, string>} what each region was last drawn from */
    this.drawn = new Map()
    this.rows = new Map() // timeline rows shown, by entry key
    this.build()
    chat.onChange = () => this.render()
    // Keyboard: Escape closes a panel (phones); Alt+Up/Down moves between
    // rooms and puts the cursor in the message box.
    this.onKey = (e) => {
      const chat = this.chat
      if (e.key === 'Escape' && this.panel) { this.panel = null; this.render() }
      if (e.altKey && (e.key === 'ArrowUp' || e.key === 'ArrowDown')) {
        const ids = this.sortedRooms().map((r) => r.id)
        if (!ids.length) return
        e.preventDefault()
        const at = ids.indexOf(chat.active)
        const next = at < 0 ? 0 : (at + (e.key === 'ArrowUp' ? ids.length - 1 : 1)) % ids.length
        chat.select(ids[next])
        this.input.focus()
      }
    }
    document.addEventListener('keydown', this.onKey)
    this.render()
  }

  destroy () {
    document.removeEventListener('keydown', this.onKey)
    this.chat.onChange = null
  }

  build () {
    const chat = this.chat
    this.statusEl = h('span.status#status', { role: 'status' })
    this.titleEl = h('h1.title#room-title')
    this.roomsBtn = h('button.only-phone#show-rooms', { type: 'button', 'aria-controls': 'sidebar', text: 'Rooms', onclick: () => this.toggle('rooms') })
    this.membersBtn = h('button.only-phone#show-members', { type: 'button', 'aria-controls': 'members', text: 'Members', onclick: () => this.toggle('members') })
    const top = h('header.topbar', {},
      this.roomsBtn, h('span.brand', { text: 'e2ee-chat' }), this.titleEl, this.statusEl, this.membersBtn,
      h('button#export', { type: 'button', text: 'Export profile', onclick: () => this.exportProfile() }),
      h('button#lock', { type: 'button', text: 'Lock', onclick: () => this.onLock() }))

    this.roomList = h('ul.rooms#room-list', { 'aria-label': 'Your rooms' })
    this.directoryEl = h('ul.rooms#directory', { 'aria-label': 'Public rooms' })
    const create = h('form#create-room', { onsubmit: (e) => this.submit(e, async (f) => {
      if (await chat.createRoom(f.name.value.trim(), f.password.value, f.hidden.checked)) this.done(f)
    }) },
    h('h3', { text: 'New room' }),
    h('label', { text: 'Name' }, h('input', { name: 'name', required: true, maxlength: 64, autocomplete: 'off' })),
    h('label', { text: 'Password (optional)' }, h('input', { name: 'password', type: 'password', autocomplete: 'new-password' })),
    h('label.check', {}, h('input', { name: 'hidden', type: 'checkbox' }), 'Hidden (not listed)'),
    h('button', { type: 'submit', text: 'Create' }))
    const join = h('form#join-room', { onsubmit: (e) => this.submit(e, async (f) => {
      if (await chat.joinRoom(f.room_id.value.trim(), f.password.value)) this.done(f)
    }) },
    h('h3', { text: 'Join by id' }),
    h('label', { text: 'Room id' }, h('input', { name: 'room_id', required: true, autocomplete: 'off' })),
    h('label', { text: 'Password (if any)' }, h('input', { name: 'password', type: 'password', autocomplete: 'off' })),
    h('button', { type: 'submit', text: 'Join' }))
    this.sidebar = h('aside.sidebar#sidebar', { 'aria-label': 'Rooms' },
      h('p.me', {}, 'Signed in as ', h('strong#me', { text: chat.me.username })),
      h('p.fp', { title: 'Your fingerprint: others compare it to trust you' }, fingerprintDisplay(chat.myFingerprint)),
      h('h2', { text: 'Your rooms' }), this.roomList,
      h('details', {}, h('summary', { text: 'Create or join a room' }), create, join),
      h('h2', {}, 'Browse ', h('button.link#browse', { type: 'button', text: 'refresh', onclick: () => chat.listRooms() })),
      this.directoryEl)

    this.banners = h('div.banners#banners')
    this.timeline = h('ol.timeline#timeline', { 'aria-live': 'polite', 'aria-label': 'Messages' })
    this.input = h('input#message', { name: 'text', autocomplete: 'off', placeholder: 'Write a message', 'aria-label': 'Message', maxlength: 20000 })
    // The box empties at once so the next message can be typed while this
    // one is sealed and sent (sends keep their order in Chat's queue); a
    // message that was not sent comes back into an empty box.
    this.composer = h('form.composer#composer', { onsubmit: (e) => {
      e.preventDefault()
      const text = this.input.value
      if (!text.trim() || !chat.active) return
      this.input.value = ''
      chat.send(chat.active, text).then((sent) => {
        if (!sent && !this.input.value) this.input.value = text
      })
    } }, this.input, h('button', { type: 'submit', text: 'Send' }))
    this.roomInfo = h('div.roominfo#room-info')
    this.empty = h('div.empty#empty', {}, h('p', { text: 'Pick a room, create one, or join one by id.' }))
    this.main = h('section.room#room', { 'aria-label': 'Conversation' },
      this.roomInfo, this.banners, this.timeline, this.composer)

    this.memberList = h('ul.members#member-list')
    this.ownerTools = h('div.owner#owner-tools')
    this.membersPane = h('aside.memberspane#members', { 'aria-label': 'Members' },
      h('h2', { text: 'Members' }), this.memberList, this.ownerTools)

    this.noticesEl = h('div.notices#notices', { 'aria-live': 'assertive' })
    this.root.replaceChildren(top, h('div.layout#layout', {}, this.sidebar, this.empty, this.main, this.membersPane), this.noticesEl)
    this.buildOwnerTools()
    this.delegateClicks()
  }

  // One click handler per list, reading the rows' data-* attributes,
  // instead of fresh closures on every row at every render.
  delegateClicks () {
    const chat = this.chat
    const on = (list, selector, act) => list.addEventListener('click', (e) => {
      const el = e.target instanceof Element ? e.target.closest(selector) : null
      if (el && list.contains(el)) act(el)
    })
    on(this.roomList, 'button[data-room]', (el) => {
      this.panel = null
      chat.select(el.dataset.room)
      this.input.focus()
    })
    on(this.directoryEl, 'button[data-join]', async (el) => {
      const s = (chat.directory?.rooms || []).find((r) => r.room_id === el.dataset.join)
      if (!s) return
      const pw = s.has_password ? prompt(`Password for "${esc(s.name)}"`) : ''
      if (pw === null) return
      await chat.joinRoom(s.room_id, pw)
      chat.listRooms()
    })
    on(this.memberList, 'button[data-op]', (el) => {
      const username = el.closest('[data-member]')?.dataset.member
      const op = el.dataset.op
      if (!username || !chat.active || (op !== 'kick' && op !== 'ban')) return
      chat.owner(op, { room_id: chat.active, username }, `${username} was ${op === 'kick' ? 'kicked' : 'banned'}.`)
    })
  }

  buildOwnerTools () {
    const chat = this.chat
    const target = (f) => ({ room_id: chat.active, username: f.username.value.trim() })
    const userForm = h('form#owner-user', { onsubmit: (e) => e.preventDefault() },
      h('label', { text: 'User' }, h('input', { name: 'username', autocomplete: 'off', required: true })),
      h('div.row', {},
        ...['kick', 'ban', 'unban'].map((op) => h(`button#owner-${op}`, { type: 'button', text: op[0].toUpperCase() + op.slice(1),
          onclick: (e) => this.submit(e, async (f) => {
            if (!f.reportValidity()) return
            if (await chat.owner(op, target(f), `${f.username.value.trim()}: ${op} done.`)) f.reset()
          }) }))))
    const rename = h('form#owner-rename', { onsubmit: (e) => this.submit(e, async (f) => {
      if (await chat.owner('rename_room', { room_id: chat.active, name: f.name.value.trim() }, 'Renamed.')) f.reset()
    }) }, h('label', { text: 'New name' }, h('input', { name: 'name', required: true, maxlength: 64, autocomplete: 'off' })),
    h('button', { type: 'submit', text: 'Rename' }))
    const password = h('form#owner-password', { onsubmit: (e) => this.submit(e, async (f) => {
      const pw = f.password.value
      if (await chat.owner('set_password', { room_id: chat.active, ...(pw ? { password: pw } : {}) }, pw ? 'Password set.' : 'Password removed.')) f.reset()
    }) }, h('label', { text: 'Room password (empty removes it)' }, h('input', { name: 'password', type: 'password', autocomplete: 'new-password' })),
    h('button', { type: 'submit', text: 'Set password' }))
    const del = h('button.danger#owner-delete', { type: 'button', text: 'Delete room', onclick: () => {
      const room = chat.rooms.get(chat.active)
      if (room && confirm(`Delete "${esc(room.summary.name)}" and all its messages for everyone?`)) chat.owner('delete_room', { room_id: room.id })
    } })
    this.ownerTools.replaceChildren(h('h3', { text: 'Owner tools' }), userForm, rename, password, del)
  }

  // Runs a form's action with its submit button disabled meanwhile.
  async submit (e, action) {
    e.preventDefault()
    const form = e.target.closest('form')
    const buttons = form.querySelectorAll('button')
    buttons.forEach((b) => { b.disabled = true })
    try { await action(form) } finally { buttons.forEach((b) => { b.disabled = false }) }
  }

  // A create or join form that worked: clear it, fold it away, show the room.
  done (form) {
    form.reset()
    form.closest('details').open = false
    this.panel = null
    this.render()
  }

  toggle (panel) {
    this.panel = this.panel === panel ? null : panel
    this.render()
  }

  exportProfile () {
    const file = profileFile(this.chat.me.username)
    file.then((blob) => {
      if (!blob) return
      const a = h('a', { href: URL.createObjectURL(blob), download: `${this.chat.me.username}.e2ee-chat-profile.json` })
      document.body.append(a)
      a.click()
      a.remove()
    })
  }

  render () {
    const chat = this.chat
    const room = chat.active ? chat.rooms.get(chat.active) : null
    this.statusEl.textContent = { online: 'online', open: 'logging in…', connecting: 'connecting…', closed: 'offline, reconnecting…', refused: 'login refused' }[chat.status] || chat.status
    this.statusEl.dataset.state = chat.status
    this.root.dataset.panel = this.panel || ''
    this.root.dataset.room = room ? 'open' : 'none'
    this.roomsBtn.setAttribute('aria-expanded', this.panel === 'rooms')
    this.membersBtn.setAttribute('aria-expanded', this.panel === 'members')
    this.membersBtn.hidden = !room
    this.titleEl.textContent = room ? esc(room.summary.name) : ''
    this.renderRooms()
    this.renderDirectory()
    this.main.hidden = !room
    this.membersPane.hidden = !room
    this.empty.hidden = !!room
    if (room) {
      this.renderRoomInfo(room)
      this.renderBanners(room)
      this.renderTimeline(room)
      this.renderMembers(room)
      const blocked = chat.blockedBy(room).length > 0
      this.input.disabled = blocked
      this.input.placeholder = blocked ? 'Sending is blocked until you confirm the changed keys above' : 'Write a message'
    } else {
      // Nothing of a room left behind stays in the page.
      for (const el of [this.roomInfo, this.banners, this.timeline, this.memberList]) el.replaceChildren()
      for (const region of ['roomInfo', 'banners', 'members']) this.drawn.delete(region)
      this.shownRoom = null
      this.rows = new Map()
    }
    this.noticesEl.replaceChildren(...chat.notices.map((n) => h(`p.notice.${n.kind}`, { text: esc(n.text) })))
  }

  // True when `region` was last drawn from the same inputs (nothing to do);
  // otherwise remembers them and the caller redraws it.
  unchanged (region, inputs) {
    const key = JSON.stringify(inputs)
    if (this.drawn.get(region) === key) return true
    this.drawn.set(region, key)
    return false
  }

  sortedRooms () {
    return [...this.chat.rooms.values()].sort((a, b) => a.summary.name.localeCompare(b.summary.name))
  }

  renderRooms () {
    const chat = this.chat
    const rooms = this.sortedRooms()
    const shown = rooms.map((r) => [r.id, r.summary.name, r.summary.has_password, r.summary.hidden,
      chat.active === r.id ? 0 : chat.unread(r)])
    if (this.unchanged('rooms', [chat.active, shown])) return
    this.roomList.replaceChildren(...rooms.map((r) => {
      const unread = chat.active === r.id ? 0 : chat.unread(r)
      return h('li', {}, h('button.roombtn', {
        type: 'button', 'data-room': r.id, 'aria-current': chat.active === r.id ? 'true' : null
      }, h('span.name', { text: esc(r.summary.name) }),
      r.summary.has_password ? h('span.tag', { text: 'password', title: 'password' }) : null,
      r.summary.hidden ? h('span.tag', { text: 'hidden' }) : null,
      unread ? h('span.unread', { text: String(unread), 'aria-label': `${unread} unread` }) : null))
    }))
    if (!rooms.length) this.roomList.replaceChildren(h('li.muted', { text: 'No rooms yet.' }))
  }

  renderDirectory () {
    const chat = this.chat
    const list = (chat.directory?.rooms || []).filter((s) => !chat.rooms.has(s.room_id))
    const shown = list.map((s) => [s.room_id, s.name, s.members, s.has_password])
    if (this.unchanged('directory', [shown, chat.directory?.connected])) return
    const items = list.map((s) => h('li.dir', {},
      h('span.name', { text: esc(s.name) }), h('span.muted', { text: ` ${plural(s.members, 'member')}${s.has_password ? ', password' : ''}` }),
      h('button', { type: 'button', text: 'Join', 'data-join': s.room_id })))
    const footer = chat.directory ? h('li.muted', { text: `${chat.directory.connected} online on the server` }) : null
    this.directoryEl.replaceChildren(...items, footer || [])
  }

  renderRoomInfo (room) {
    const s = room.summary
    if (this.unchanged('roomInfo', [room.id, s.owner, s.members, s.has_password, s.hidden])) return
    this.roomInfo.replaceChildren(
      h('span.muted', {}, 'id ', h('code#room-id', { text: esc(s.room_id) })),
      h('span.muted', { text: ` · owner ${esc(s.owner)} · ${plural(s.members, 'member')}${s.has_password ? ' · password' : ''}${s.hidden ? ' · hidden' : ''}` }),
      h('button.link#leave', { type: 'button', text: 'Leave', onclick: () => {
        if (confirm(`Leave "${esc(s.name)}"?`)) this.chat.leave(room.id)
      } }))
  }

  renderBanners (room) {
    const chat = this.chat
    const changes = chat.keyChanges(room)
    if (this.unchanged('banners', [room.id, changes.map((c) => [c.username, String(c.old), String(c.fingerprint)])])) return
    this.banners.replaceChildren(...changes.map((c) => {
      const u = c.username
      return h('form.banner.keychange', { 'data-user': u, onsubmit: (e) => this.submit(e, (f) => chat.confirm(room.id, u, f.fingerprint.value)) },
        h('strong', { text: `⚠ ${u}'s keys changed.` }),
        h('p', { text: 'This can mean they set up a new device, or that someone (the server, say) is trying to read your messages. Compare the new fingerprint with them over another channel (in person, a call) before you confirm.' }),
        h('p', {}, 'Pinned: ', h('code', { text: fingerprintDisplay(c.old) })),
        h('p', {}, 'Served now: ', h('code.newfp', { text: fingerprintDisplay(c.fingerprint) })),
        h('label', { text: `Type the fingerprint ${u} read to you` }, h('input', { name: 'fingerprint', autocomplete: 'off', required: true })),
        h('button', { type: 'submit', text: 'Confirm new keys' }))
    }))
  }

  // Patches the timeline by entry key: rows already shown are kept (and
  // moved only if their place changed), new ones are made, gone ones go, so
  // an event costs one new row, not 2,000 rebuilt ones.
  renderTimeline (room) {
    const tl = this.timeline
    const switched = this.shownRoom !== room.id
    const atBottom = switched || tl.scrollHeight - tl.scrollTop - tl.clientHeight < 40
    if (switched) {
      this.rows = new Map()
      tl.replaceChildren()
    }
    this.shownRoom = room.id
    const keys = new Set(room.entries.map((e) => e.key))
    for (const [key, row] of this.rows) if (!keys.has(key)) row.remove()
    const rows = new Map()
    let cursor = tl.firstChild
    for (const e of room.entries) {
      const row = this.rows.get(e.key) || timelineRow(e)
      rows.set(e.key, row)
      if (row === cursor) {
        cursor = cursor.nextSibling
      } else {
        tl.insertBefore(row, cursor)
      }
    }
    while (cursor) {
      const next = cursor.nextSibling
      cursor.remove()
      cursor = next
    }
    this.rows = rows
    if (atBottom) tl.scrollTop = tl.scrollHeight
  }

  renderMembers (room) {
    const chat = this.chat
    const isOwner = room.summary.owner === chat.me.username
    const members = [...room.members.values()].sort((a, b) => a.username.localeCompare(b.username))
    this.ownerTools.hidden = !isOwner
    const shown = members.map((m) => [m.username, m.online, chat.isChanged(m), fingerprintDisplay(m.fingerprint)])
    if (this.unchanged('members', [room.id, room.summary.owner, isOwner, shown])) return
    this.memberList.replaceChildren(...members.map((m) => {
      const changed = chat.isChanged(m)
      return h(`li.member${m.online ? '.online' : ''}${changed ? '.changed' : ''}`, { 'data-member': m.username },
        h('span.dot', { 'aria-label': m.online ? 'online' : 'offline', title: m.online ? 'online' : 'offline' }),
        h('span.name', { text: m.username + (m.username === room.summary.owner ? ' (owner)' : '') }),
        changed ? h('span.tag.warn', { text: 'keys changed' }) : null,
        h('code.fp', { text: fingerprintDisplay(m.fingerprint) }),
        isOwner && m.username !== chat.me.username
          ? h('span.row', {},
            h('button', { type: 'button', text: 'Kick', 'data-op': 'kick' }),
            h('button', { type: 'button', text: 'Ban', 'data-op': 'ban' }))
          : null)
    }))
  }
}

// One timeline row; entries never change once added (a changed one is
// removed and added again under a new key).
function timelineRow (e) {
  if (e.kind === 'msg') {
    return h(`li.msg${e.mine ? '.mine' : ''}`, { 'data-seq': e.seq },
      h('span.who', { text: esc(e.sender) }),
      h('time', { text: time(e.sentAt), title: `sent ${full(e.sentAt)} (sender's clock); stored ${full(e.ts)}` }),
      h('span.text', { text: esc(e.text) }))
  }
  if (e.kind === 'failed') {
    return h('li.failed', { 'data-seq': e.seq }, h('span.who', { text: safe(e.sender) }),
      h('span.text', { text: esc(`⚠ message #${e.seq} not shown: ${e.reason}`) }))
  }
  return h(`li.sys.${e.kind}`, { text: esc(e.text) })
}

function plural (n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`
}

function safe (name) {
  return typeof name === 'string' ? esc(name) : '?'
}
