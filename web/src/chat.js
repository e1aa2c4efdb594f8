// @ts-check
// The logged-in client: rooms, timelines, members, pins and the client
// duties of docs/PROTOCOL.md section 7. It owns the state the UI draws and
// calls `onChange` after every change; it never touches the DOM.
//
// Every server event and every timeline change runs through one promise
// queue, so messages are checked and deduplicated one at a time.

import * as p from './proto.js'
import { Conn, ServerError } from './conn.js'
import { kv } from './keystore.js'
import { describe } from './errors.js'
import { ChatBase, safeName } from './chatbase.js'

const PAGE = 50

export class Chat extends ChatBase {
  /**
   * @param {{username: string, sign: CryptoKey, enc: CryptoKey, signDer: Uint8Array, encDer: Uint8Array}} me
   *   the unlocked keys
   * @param {{url: string, host: string, onChange?: (() => void) | null,
   *   visible?: () => boolean}} options
   *   `visible` says whether the user can see the page (messages in the open
   *   room count as read only then); Chat itself never touches the DOM.
   */
  constructor (me, options) {
    super(options)
    this.me = me
    // Maps, not objects: names and room ids come from the server, and a key
    // like "__proto__" must stay just a key. IndexedDB stores Maps as they are.
    this.pins = new Map() // username -> {fingerprint, sign_key, enc_key} (hex)
    this.recipients = new Map() // room_id -> [username]
    this.outbox = [] // sends waiting for the connection: {roomId, text, body}
  }

  async start () {
    const me = this.me.username
    this.pins = (await kv.get(`pins/${me}`)) || new Map()
    this.recipients = (await kv.get(`recipients/${me}`)) || new Map()
    this.read = (await kv.get(`read/${me}`)) || new Map()
    this.myFingerprint = await p.fingerprint(this.me.signDer, this.me.encDer)
    if (!this.pins.has(me)) this.pins.set(me, pinOf(this.myFingerprint, this.me.signDer, this.me.encDer))
    this.conn = new Conn(this.url, {
      onOpen: () => this.serial(() => this.login()),
      onEvent: (e) => this.serial(() => this.event(e)),
      onState: (state, code) => {
        this.status = state
        if (state === 'closed' && code === 1008) this.notify('The server closed the connection (policy). Reconnecting…', 'error')
        this.changed_()
      }
    })
  }

  // ---- login and catch-up ----

  async login () {
    let reply
    try {
      const { nonce } = await this.conn.request('login', { username: this.me.username })
      const signature = await p.sign(this.me.sign, p.loginInput(this.host, this.me.username, nonce))
      reply = await this.conn.request('prove', { signature })
    } catch (e) {
      // Not a network error: this server refuses this identity (unknown
      // user, other keys). Say so rather than show "logging in" forever.
      if (e.code !== 'disconnected') this.status = 'refused'
      throw e
    }
    this.status = 'online'
    const joined = new Set()
    for (const s of reply.rooms) { joined.add(s.room_id); this.room(s) }
    for (const id of [...this.rooms.keys()]) {
      if (!joined.has(id)) this.dropRoom(id, 'You are no longer a member of this room.')
    }
    this.changed_()
    // Members may have joined, left or changed keys while we were away.
    for (const room of this.rooms.values()) {
      if (!room.loaded) continue
      await this.refreshMembers(room)
      await this.catchUp(room)
    }
    if (this.active && this.rooms.has(this.active)) await this.load(this.rooms.get(this.active))
    await this.flushOutbox()
    await this.listRooms()
  }

  room (summary) {
    let room = this.rooms.get(summary.room_id)
    if (!room) {
      room = new Room(summary)
      this.rooms.set(summary.room_id, room)
    } else room.summary = summary
    return room
  }

  async markRead (room) {
    const seq = Math.max(room.summary.last_seq || 0, room.highest)
    if ((this.read.get(room.id) || 0) >= seq) return
    this.read.set(room.id, seq)
    await kv.put(`read/${this.me.username}`, this.read)
  }

  // Opens a room in the main pane, loading members and the latest page.
  select (roomId) {
    this.active = roomId
    this.changed_()
    return this.serial(async () => {
      const room = this.rooms.get(roomId)
      if (room) await this.load(room)
    })
  }

  async load (room) {
    if (!room.loaded) {
      await this.refreshMembers(room)
      const page = await this.conn.request('history', { room_id: room.id, limit: PAGE })
      room.hasMore = page.has_more
      for (const m of page.messages) await this.accept(room, m)
      room.loaded = true
      await this.catchUp(room)
    }
    if (this.active === room.id) await this.markRead(room)
    this.changed_()
  }

  // Everything after the newest seq we hold, page by page.
  async catchUp (room) {
    for (;;) {
      const page = await this.conn.request('history', { room_id: room.id, after_seq: room.highest, limit: 500 })
      for (const m of page.messages) await this.accept(room, m)
      if (!page.has_more || page.messages.length === 0) break
    }
    if (this.active === room.id) await this.markRead(room)
    this.changed_()
  }

  older (roomId) {
    return this.serial(async () => {
      const room = this.rooms.get(roomId)
      if (!room || !room.hasMore) return
      const before = room.lowest === Infinity ? undefined : room.lowest
      const page = await this.conn.request('history', { room_id: room.id, before_seq: before, limit: PAGE })
      room.hasMore = page.has_more
      for (const m of page.messages) await this.accept(room, m)
      this.changed_()
    })
  }

  // ---- members and pins ----

  async refreshMembers (room) {
    const reply = await this.conn.request('get_members', { room_id: room.id })
    await this.setMembers(room, reply.members)
  }

  async setMembers (room, members) {
    room.members = new Map()
    for (const m of members) await this.addMember(room, m)
  }

  // Pins a member's keys on first sight. A known user served with other
  // keys is a key change in this room only: the member object keeps what the
  // server served here, the pin stays, and the room is blocked until the
  // user confirms that fingerprint (see keyChanges).
  async addMember (room, m) {
    if (typeof m.username !== 'string' || !p.USERNAME.test(m.username)) {
      room.add({ kind: 'event', text: 'A member with an invalid name was refused.' })
      return false
    }
    const fingerprint = await p.fingerprint(m.sign_key, m.enc_key)
    const member = { ...m, fingerprint }
    room.members.set(m.username, member)
    if (!this.pins.has(m.username)) {
      this.pins.set(m.username, pinOf(fingerprint, m.sign_key, m.enc_key))
      await this.savePins()
    }
    this.warnIfChanged(room, member)
    return true
  }

  savePins () { return kv.put(`pins/${this.me.username}`, this.pins) }

  // Whether the keys the server serves for this member differ from the pin.
  isChanged (member) {
    const pin = this.pins.get(member.username)
    return !pin || pin.fingerprint !== member.fingerprint
  }

  // The members of this room whose served keys are not the pinned ones,
  // decided from this room's own member objects: what another room serves
  // (or a confirmation there) never lifts this room's block.
  keyChanges (room) {
    return [...room.members.values()].filter((m) => this.isChanged(m))
      .map((m) => ({ username: m.username, old: this.pins.get(m.username)?.fingerprint, fingerprint: m.fingerprint }))
  }

  blockedBy (room) {
    return this.keyChanges(room).map((c) => c.username)
  }

  // A sender is untrusted while any room serves other keys for them.
  untrusted (username) {
    for (const room of this.rooms.values()) {
      const m = room.members.get(username)
      if (m && this.isChanged(m)) return true
    }
    return false
  }

  // One warning line per room and served fingerprint.
  warnIfChanged (room, member) {
    if (!this.isChanged(member)) return
    const key = `${member.username}/${member.fingerprint}`
    if (room.warned.has(key)) return
    room.warned.add(key)
    room.add({ kind: 'warning', text: `${member.username}'s keys changed. Messages from them are untrusted and sending here is blocked until you compare and confirm their new fingerprint.` })
  }

  // The user typed the fingerprint they compared out of band, for the keys
  // this room serves. Other rooms that serve other keys stay blocked.
  confirm (roomId, username, typed) {
    return this.serial(async () => {
      const member = this.rooms.get(roomId)?.members.get(username)
      if (!member || !this.isChanged(member)) return
      const clean = typed.replace(/[\s:]/g, '').toLowerCase()
      if (clean !== member.fingerprint) {
        this.notify(`That is not the fingerprint the server serves for ${username}. Nothing was changed.`, 'error')
        return
      }
      this.pins.set(username, pinOf(member.fingerprint, member.sign_key, member.enc_key))
      await this.savePins()
      for (const room of this.rooms.values()) {
        const m = room.members.get(username)
        if (!m) continue
        if (this.isChanged(m)) { this.warnIfChanged(room, m); continue }
        room.add({ kind: 'event', text: `You confirmed ${username}'s new fingerprint.` })
        for (const e of room.entries.filter((e) => e.kind === 'failed' && e.raw?.sender === username)) {
          room.remove(e)
          await this.accept(room, e.raw)
        }
      }
      this.changed_()
    })
  }

  // ---- messages ----

  async accept (room, m) {
    let entry
    const pin = this.pins.get(m.sender)
    const seenKey = `${m.sender}/${p.hex(m.msg_id)}`
    if (m.room_id !== room.id) {
      // A server can answer one room's history with another room's signed
      // messages: they are not this room's, whatever they say.
      entry = { kind: 'failed', reason: 'this message belongs to another room', raw: m }
    } else if (room.seen.has(seenKey)) {
      room.cover(m.seq)
      return
    } else if (this.untrusted(m.sender)) {
      entry = { kind: 'failed', reason: `untrusted: ${m.sender}'s keys changed and are not confirmed`, raw: m }
    } else if (!pin) {
      entry = { kind: 'failed', reason: 'no known keys for this sender', raw: m }
    } else {
      try {
        const { text, sentAt } = await p.open(this.me.enc, fromHex(pin.sign_key), m)
        room.seen.add(seenKey)
        entry = { kind: 'msg', text, sentAt, mine: m.sender === this.me.username }
      } catch (e) {
        entry = { kind: 'failed', reason: e.message, raw: m }
      }
    }
    room.add({ ...entry, seq: m.seq, ts: m.ts, sender: m.sender })
    room.stored(m.seq)
  }

  send (roomId, text) {
    return this.serial(() => this.deliver(roomId, text, null))
  }

  // Seals `text` (unless `body` is a sealed copy to send again) and sends it.
  // Answers true once it is stored, or queued in the outbox because the
  // connection is down: after the next login the same body goes again, and
  // its msg_id makes that safe even if the first copy was stored after all.
  async deliver (roomId, text, body) {
    const room = this.rooms.get(roomId)
    if (!room) return false
    for (let attempt = 0; attempt < 3; attempt++) {
      if (!body) {
        const blocked = this.blockedBy(room)
        if (blocked.length) {
          this.notify(`Not sent: confirm the new fingerprint of ${blocked.join(', ')} first.`, 'error')
          return false
        }
        this.announceRecipients(room)
        await this.saveRecipients()
        body = await p.seal(this.me.sign, room.id, this.pinnedRecipients(room), text)
      }
      try {
        await this.conn.request('send', body)
        return true
      } catch (e) {
        if (e.code === 'disconnected') {
          this.outbox.push({ roomId, text, body })
          room.add({ kind: 'event', text: `Not connected: "${text}" will be sent when the connection is back.` })
          return true
        }
        if (!(e instanceof ServerError) || e.code !== 'stale_members' || !e.members) throw e
        await this.setMembers(room, e.members)
        body = null
      }
    }
    throw new Error('The room\'s members keep changing; not sent.')
  }

  // Every member with the keys we pinned, never the keys the server serves:
  // a member without a pin or with other served keys stops the send.
  pinnedRecipients (room) {
    return [...room.members.values()].map((m) => {
      const pin = this.pins.get(m.username)
      if (!pin || this.isChanged(m)) throw new Error(`Not sent: ${m.username}'s keys are not confirmed.`)
      return { username: m.username, enc_key: fromHex(pin.enc_key) }
    })
  }

  // After a login: what could not be sent while disconnected, in order.
  async flushOutbox () {
    for (const { roomId, text, body } of this.outbox.splice(0)) {
      try {
        await this.deliver(roomId, text, body)
      } catch (e) {
        this.notify(`Not sent: "${text}": ${describe(e)}`, 'error')
      }
    }
  }

  // Section 7: before encrypting to a member for the first time in a room,
  // say who they are.
  announceRecipients (room) {
    const known = new Set(this.recipients.get(room.id) || [])
    for (const m of room.members.values()) {
      if (known.has(m.username) || m.username === this.me.username) continue
      room.add({ kind: 'recipient', text: `New recipient: your messages here are now also encrypted to ${m.username}, fingerprint ${p.fingerprintDisplay(m.fingerprint)}.` })
      known.add(m.username)
    }
    this.recipients.set(room.id, [...known])
  }

  saveRecipients () { return kv.put(`recipients/${this.me.username}`, this.recipients) }

  // ---- server events ----

  async event (e) {
    const room = e.room_id !== undefined ? this.rooms.get(e.room_id) : null
    switch (e.type) {
      case 'message':
        if (!room) return
        if (room.loaded) await this.accept(room, e)
        else room.stored(e.seq)
        if (this.active === room.id && this.visible()) await this.markRead(room)
        break
      case 'member_joined':
        if (!room) return
        if (await this.addMember(room, e.member)) {
          room.add({ kind: 'event', text: `${e.member.username} joined.` })
          room.summary.members = room.members.size
        }
        break
      case 'member_left':
        if (!room) return
        room.members.delete(e.username)
        room.summary.members = room.members.size
        room.add({ kind: 'event', text: `${safeName(e.username)} ${{ kicked: 'was kicked', banned: 'was banned' }[e.reason] || 'left'}.` })
        break
      default:
        if (!this.sharedEvent(room, e)) return
    }
    this.changed_()
  }

  // ---- requests from the UI ----

  async joined (reply) {
    if (!reply) return null
    await this.serial(async () => {
      const room = this.room(reply.room)
      await this.setMembers(room, reply.members)
    })
    // Loading the room's history goes on in the background: the form that
    // asked is done once the server said yes.
    this.select(reply.room.room_id)
    this.listRooms()
    return reply
  }

  async createRoom (name, password, hidden) {
    return this.joined(await this.ask('create_room', { name, ...(password ? { password } : {}), hidden: !!hidden }))
  }

  async joinRoom (roomId, password) {
    return this.joined(await this.ask('join_room', { room_id: roomId, ...(password ? { password } : {}) }))
  }
}

export class Room {
  constructor (summary) {
    this.summary = summary
    this.id = summary.room_id
    this.members = new Map()
    this.entries = [] // timeline, by seq; events without seq go at the end
    this.seen = new Set()
    this.warned = new Set() // username/fingerprint of key changes told here
    this.loaded = false
    this.hasMore = false
    this.lowest = Infinity
    this.highest = 0
    this.counter = 0
  }

  // The server has messages up to `seq` (for unread counts).
  stored (seq) {
    if (seq > (this.summary.last_seq || 0)) this.summary.last_seq = seq
  }

  cover (seq) {
    if (seq === undefined) return
    this.lowest = Math.min(this.lowest, seq)
    this.highest = Math.max(this.highest, seq)
  }

  add (entry) {
    entry.key = ++this.counter
    if (entry.seq === undefined) {
      entry.after = this.highest
      this.entries.push(entry)
      return
    }
    this.cover(entry.seq)
    // Insert by seq; entries without one keep their place after older messages.
    let i = this.entries.length
    const later = (e) => e.seq === undefined ? e.after >= entry.seq : e.seq > entry.seq
    while (i > 0 && later(this.entries[i - 1])) i--
    this.entries.splice(i, 0, entry)
    if (this.entries.length > 2000) this.entries.splice(0, this.entries.length - 2000)
  }

  remove (entry) {
    this.entries = this.entries.filter((e) => e !== entry)
  }
}

function pinOf (fingerprint, signDer, encDer) {
  return { fingerprint, sign_key: p.hex(signDer), enc_key: p.hex(encDer) }
}

function fromHex (h) {
  return Uint8Array.from(h.match(/../g), (b) => parseInt(b, 16))
}
