// @ts-check
// The logged-in client (docs/PROTOCOL.md): every room an MLS group this
// browser's device is a leaf of (src/mls.js, ts-mls), and section 7's
// duties:
//
// - identity keys pinned on first use; a member served with another key
//   blocks sending in that room until the user confirms its fingerprint;
// - the room's log applied strictly in seq order (a gap reads history), each
//   commit's leaves checked against the pins (a failure blocks the room),
//   new devices named in the timeline as their commits land;
// - a message's MLS sender checked against the entry's sender and device;
// - `commit_required` answered by committing the Removes, `stale_epoch` by
//   reading the log and trying again, a member who left removed by a commit
//   (every member's device may race to make it; one wins), an update of this
//   device's leaf at least weekly, and a resync by external commit when the
//   log cannot be followed, said in the timeline.
//
// State in IndexedDB (`kv`): the pins, and sealed under this browser's state
// key (wrapped under the passphrase's key, keystore.js) the device (its key
// and certificate) and per room the group state with the log position, the
// texts read and the devices told about: written in one transaction per MLS
// operation.

import * as p from './proto.js'
import * as m from './mls.js'
import { Conn, ServerError } from './conn.js'
import { kv, stateKey, seal, unseal } from './keystore.js'
import { describe } from './errors.js'
import { ChatBase, Room, safeName } from './chatbase.js'
import { decodeGroupState, encodeGroupState } from 'ts-mls'

const WEEK_MS = 7 * 24 * 3600 * 1000
const subtle = globalThis.crypto.subtle
const PSS = { name: 'RSA-PSS', hash: 'SHA-256' }


export class Chat extends ChatBase {
  /**
   * @param {{username: string, sign: CryptoKey, signDer: Uint8Array, kek: CryptoKey}} me
   *   the unlocked keys (the signing key is the identity key; `kek`, the
   *   passphrase's key, unwraps this browser's state key)
   * @param {{url: string, host: string, onChange?: (() => void) | null,
   *   visible?: () => boolean}} options
   */
  constructor (me, options) {
    super(options)
    this.me = me
    /** username -> identity key DER, hex (first use) */
    this.pins = new Map()
    /** username -> CryptoKey of the pinned key */
    this.pinKeys = new Map()
    /** username -> fingerprint (hex) of the pinned key */
    this.pinFps = new Map()
    /** sends waiting for the connection: {roomId, text, msgId} */
    this.outbox = []
    this.auth = m.credentialCheck((u) => this.pinKeys.get(u))
    this.config = m.clientConfig(this.auth)
  }

  key (what) { return `v3/${this.me.username}/${what}` }

  async start () {
    const me = this.me.username
    this.pins = (await kv.get(this.key('pins'))) || new Map()
    this.read = (await kv.get(this.key('read'))) || new Map()
    this.myFingerprint = await p.fingerprint(this.me.signDer)
    if (!this.pins.has(me)) this.pins.set(me, p.hex(this.me.signDer))
    for (const [user, hex] of this.pins) await this.pinned(user, fromHex(hex))
    this.sealKey = await stateKey(me, this.me.kek)
    this.device = await this.load_('device')
    if (!this.device) {
      this.device = await m.newDevice(me, this.me.sign)
      await kv.put(this.key('device'), await seal(this.sealKey, this.key('device'), this.device))
    }
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

  // ---- login ----

  async login () {
    let reply
    try {
      const { nonce } = await this.conn.request('login', { username: this.me.username })
      const signature = await p.sign(this.me.sign, p.loginInput(this.host, this.me.username, nonce))
      reply = await this.conn.request('prove', { signature, device: this.device.certificate })
    } catch (e) {
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
      room.group = null // { state, applied, updated, told: Set<hex device id> }
      room.blocked = null // why sending is blocked (a failed credential)
      this.rooms.set(summary.room_id, room)
    } else room.summary = summary
    return room
  }

  async markRead (room) {
    const seq = Math.max(room.summary.last_seq || 0, room.group?.applied || 0)
    if ((this.read.get(room.id) || 0) >= seq) return
    this.read.set(room.id, seq)
    await kv.put(this.key('read'), this.read)
  }

  select (roomId) {
    this.active = roomId
    this.changed_()
    return this.serial(async () => {
      const room = this.rooms.get(roomId)
      if (room) await this.load(room)
    })
  }

  // The room's group from this browser, or entered by external commit; the
  // texts read before from this browser; then what the log has since.
  async load (room) {
    if (!room.loaded) {
      await this.refreshMembers(room)
      if (!room.group) await this.restore(room)
      if (!room.group) await this.enter(room, false)
      for (const t of (await this.load_(`texts/${room.id}`)) || []) this.show(room, t)
      room.loaded = true
      await this.catchUp(room)
    }
    if (this.active === room.id) await this.markRead(room)
    this.changed_()
  }

  async restore (room) {
    const saved = await this.load_(`group/${room.id}`)
    if (!saved) return
    const decoded = decodeGroupState(saved.state, 0)
    if (!decoded) throw new Error('The saved state of this room is damaged.')
    room.group = { ...saved, state: { ...decoded[0], clientConfig: this.config }, told: new Set(saved.told) }
  }

  // What one MLS operation changed, in one transaction: the group and its
  // log position, and the texts it read.
  async save (room, texts = []) {
    const g = room.group
    const group = this.key(`group/${room.id}`)
    /** @type {[string, any][]} */
    const entries = [[group, await seal(this.sealKey, group, {
      state: encodeGroupState(g.state), applied: g.applied, updated: g.updated, told: [...g.told]
    })]]
    if (texts.length) {
      const key = this.key(`texts/${room.id}`)
      const all = ((await this.load_(`texts/${room.id}`)) || []).concat(texts)
      entries.push([key, await seal(this.sealKey, key, all.slice(-2000))])
    }
    await kv.putAll(entries)
  }

  // A sealed record of this user's, or undefined.
  async load_ (what) {
    const key = this.key(what)
    return unseal(this.sealKey, key, await kv.get(key))
  }

  // An external commit into the room's group: a join, or (`resync`) a
  // rejoin that removes this device's old leaf. A refused one is dropped
  // and made again from a fresh group state.
  async enter (room, resync) {
    for (let attempt = 0; attempt < 5; attempt++) {
      const gs = await this.conn.request('group_state', { room_id: room.id })
      const { state, commit, groupInfo } = await m.joinExternal(this.device, gs.group_info, gs.ratchet_tree, this.config, resync)
      try {
        const done = await this.conn.request('commit', { room_id: room.id, commit, group_info: groupInfo })
        const told = new Set(room.group?.told || [p.hex(this.device.deviceId)])
        room.group = { state, applied: done.seq, updated: Date.now(), told }
        await this.announce(room)
        await this.save(room)
        return
      } catch (e) {
        if (!(e instanceof ServerError) || e.code !== 'stale_epoch') throw e
      }
    }
    throw new Error('The room\'s group kept moving; try again.')
  }

  // Everything after the log position, page by page, applied in order.
  async catchUp (room) {
    if (!room.group) return
    for (;;) {
      const page = await this.conn.request('history', { room_id: room.id, after_seq: room.group.applied, limit: 200 })
      for (const e of page.entries) {
        if (!await this.apply(room, e)) return this.catchUp(room)
      }
      if (!page.has_more || page.entries.length === 0) break
    }

    if (this.active === room.id) await this.markRead(room)
    this.changed_()
  }

  // Applies the next entry of the room's log. False when the device had to
  // rejoin (the caller reads the log again from the new position).
  async apply (room, e) {
    room.stored(e.seq)
    const g = room.group
    if (e.seq <= g.applied) return true
    if (e.seq > g.applied + 1) { await this.catchUp(room); return true }
    if (m.equal(e.device_id, this.device.deviceId)) {
      g.applied = e.seq
      await this.save(room)
      return true
    }
    if (e.kind === 'commit') {
      // Users seen for the first time are pinned before their leaves are checked.
      await this.refreshMembers(room)
      try {
        const r = await m.process(g.state, e.data)
        g.state = r.state
        g.applied = e.seq
      } catch (err) {
        if (this.auth.lastRefusal) {
          room.blocked = `a device in this room fails its check (${this.auth.lastRefusal})`
          this.auth.lastRefusal = ''
          room.add({ kind: 'warning', text: `Sending here is blocked: ${room.blocked}.` })
          g.applied = e.seq
          await this.save(room)
          return true
        }
        room.add({ kind: 'warning', text: `This device could not follow the room (${err.message}); it rejoined, and some messages may be unreadable.` })
        await this.enter(room, true)
        return false
      }
      await this.announce(room)
      await this.save(room)
      return true
    }
    let entry
    try {
      const r = await m.process(g.state, e.data)
      if (r.kind !== 'message') throw new Error('not a message')
      g.state = r.state
      const cert = m.decodeCertificate(r.credential)
      const plain = m.decodePlaintext(r.plaintext)
      if (cert.user !== e.sender || !m.equal(cert.device, e.device_id)) {
        entry = { kind: 'failed', reason: `the sender is not ${e.sender}'s device as the server claims`, seq: e.seq, ts: e.ts, sender: e.sender }
      } else if (!plain) {
        entry = { kind: 'failed', reason: 'not a chat message', seq: e.seq, ts: e.ts, sender: e.sender }
      } else {
        entry = { kind: 'msg', text: plain.text, sentAt: plain.sentAt, mine: e.sender === this.me.username, seq: e.seq, ts: e.ts, sender: e.sender }
      }
    } catch (err) {
      entry = { kind: 'failed', reason: `unreadable: ${err.message}`, seq: e.seq, ts: e.ts, sender: e.sender }
    }
    g.applied = e.seq
    this.show(room, entry)
    await this.save(room, [entry])
    return true
  }

  show (room, entry) {
    if (entry.seq !== undefined && room.seen.has(entry.seq)) return
    if (entry.seq !== undefined) room.seen.add(entry.seq)
    room.add({ ...entry })
  }

  // Section 7: every device in the group the user was not told about yet,
  // with its user's identity fingerprint.
  async announce (room) {
    for (const leaf of m.leaves(room.group.state)) {
      let cert
      try { cert = m.decodeCertificate(leaf.certificate) } catch { continue }
      const id = p.hex(cert.device)
      if (room.group.told.has(id)) continue
      room.group.told.add(id)
      const pin = this.pinFps.get(cert.user)
      const fp = pin ? p.fingerprintDisplay(pin) : 'unknown'
      room.add({ kind: 'recipient', text: `New device in this room: ${cert.user}, device ${id}, fingerprint ${fp}.` })
    }
  }

  // ---- members and pins ----

  // Keeps `der` as `user`'s pinned identity key (the caller saves `pins`).
  async pinned (user, der) {
    this.pins.set(user, p.hex(der))
    this.pinKeys.set(user, await importIdentity(der))
    this.pinFps.set(user, await p.fingerprint(der))
  }

  async refreshMembers (room) {
    const reply = await this.conn.request('get_members', { room_id: room.id })
    await this.setMembers(room, reply.members)
  }

  async setMembers (room, members) {
    room.members = new Map()
    for (const member of members) await this.addMember(room, member)
  }

  async addMember (room, member) {
    if (typeof member.username !== 'string' || !p.USERNAME.test(member.username)) {
      room.add({ kind: 'event', text: 'A member with an invalid name was refused.' })
      return false
    }
    const fingerprint = await p.fingerprint(member.identity_key)
    room.members.set(member.username, { ...member, fingerprint })
    if (!this.pins.has(member.username)) {
      await this.pinned(member.username, member.identity_key)
      await kv.put(this.key('pins'), this.pins)
    }
    const changed = this.isChanged(room.members.get(member.username))
    if (changed && !room.warned.has(`${member.username}/${fingerprint}`)) {
      room.warned.add(`${member.username}/${fingerprint}`)
      room.add({ kind: 'warning', text: `${member.username}'s identity key changed. Sending here is blocked until you compare and confirm their new fingerprint.` })
    }
    return true
  }

  isChanged (member) {
    const pin = this.pins.get(member.username)
    return !pin || pin !== p.hex(member.identity_key)
  }

  keyChanges (room) {
    return [...room.members.values()].filter((x) => this.isChanged(x))
      .map((x) => ({ username: x.username, old: this.pinFps.get(x.username), fingerprint: x.fingerprint }))
  }

  blockedBy (room) {
    return this.keyChanges(room).map((c) => c.username)
  }

  confirm (roomId, username, typed) {
    return this.serial(async () => {
      const room = this.rooms.get(roomId)
      const member = room?.members.get(username)
      if (!member || !this.isChanged(member)) return
      if (typed.replace(/[\s:]/g, '').toLowerCase() !== member.fingerprint) {
        this.notify(`That is not the fingerprint the server serves for ${username}. Nothing was changed.`, 'error')
        return
      }
      await this.pinned(username, member.identity_key)
      await kv.put(this.key('pins'), this.pins)
      room.add({ kind: 'event', text: `You confirmed ${username}'s new fingerprint.` })
      this.changed_()
    })
  }

  // ---- sending ----

  send (roomId, text) {
    return this.serial(() => this.deliver(roomId, text))
  }

  // Sends `text`, or keeps it in the outbox while the connection is down:
  // after the next login it goes again with the same msg_id (encrypted
  // anew, for the epoch then), so a copy stored before the connection fell
  // is answered with its first seq, never stored twice.
  async deliver (roomId, text, msgId = crypto.getRandomValues(new Uint8Array(16))) {
    const room = this.rooms.get(roomId)
    if (!room) return false
    try {
      return await this.sendNow(room, text, msgId)
    } catch (e) {
      if (!(e instanceof ServerError) || e.code !== 'disconnected') throw e
      this.outbox.push({ roomId, text, msgId })
      room.add({ kind: 'event', text: `Not connected: "${text}" will be sent when the connection is back.` })
      this.changed_()
      return true
    }
  }

  // After a login: what could not be sent while disconnected, in order.
  async flushOutbox () {
    for (const { roomId, text, msgId } of this.outbox.splice(0)) {
      try {
        await this.deliver(roomId, text, msgId)
      } catch (e) {
        this.notify(`Not sent: "${text}": ${describe(e)}`, 'error')
      }
    }
  }

  async sendNow (room, text, msgId) {
    if (!room.group) await this.load(room)
    const blocked = this.blockedBy(room)
    if (blocked.length) {
      this.notify(`Not sent: confirm the new fingerprint of ${blocked.join(', ')} first.`, 'error')
      return false
    }
    if (room.blocked) {
      this.notify(`Not sent: ${room.blocked}.`, 'error')
      return false
    }
    await this.catchUp(room)
    if (room.group.updated + WEEK_MS < Date.now()) await this.commit(room, [])
    for (let attempt = 0; attempt < 5; attempt++) {
      const sentAt = Date.now()
      const { state, message } = await m.encrypt(room.group.state, m.encodePlaintext(text, sentAt))
      room.group.state = state
      await this.save(room)
      try {
        const reply = await this.conn.request('send', { room_id: room.id, msg_id: msgId, message })
        const mine = { kind: 'msg', text, sentAt, mine: true, seq: reply.seq, ts: reply.ts, sender: this.me.username }
        this.show(room, mine)
        await this.save(room, [mine])
        this.changed_()
        return true
      } catch (e) {
        if (!(e instanceof ServerError)) throw e
        if (e.code === 'commit_required') await this.commit(room, /** @type {any} */ (e).remove || [])
        else if (e.code === 'stale_epoch') await this.catchUp(room)
        else throw e
      }
    }
    throw new Error('The room\'s group kept moving; not sent.')
  }

  // A commit of Removes and an update path, merged at `committed`. The
  // leaves are found again by device after a stale epoch (an index may be
  // reused); ones another member removed meanwhile are not removed twice.
  async commit (room, remove) {
    const devices = remove.map((i) => leafDevice(room.group.state, i)).filter(Boolean)
    for (let attempt = 0; attempt < 5; attempt++) {
      const now = attempt === 0
        ? remove
        : devices.map((d) => m.leaves(room.group.state).find((l) => leafDevice(room.group.state, l.index) === d)?.index).filter((i) => i !== undefined)
      if (attempt > 0 && remove.length && !now.length) return
      const { next, commit, groupInfo } = await m.commit(room.group.state, now)
      try {
        const done = await this.conn.request('commit', { room_id: room.id, commit, group_info: groupInfo })
        room.group.state = next
        room.group.updated = Date.now()
        if (room.group.applied + 1 === done.seq) room.group.applied = done.seq
        await this.save(room)
        return
      } catch (e) {
        if (!(e instanceof ServerError) || e.code !== 'stale_epoch') throw e
        await this.catchUp(room)
      }
    }
    throw new Error('The room\'s group kept moving; try again.')
  }

  // Section 7: a member left, was kicked or banned: their leaves go.
  async removeUser (room, username) {
    if (!room.group) return
    await this.catchUp(room)
    const gone = m.leaves(room.group.state).filter((l) => {
      try { return m.decodeCertificate(l.certificate).user === username } catch { return false }
    }).map((l) => l.index)
    if (gone.length) await this.commit(room, gone)
  }

  // ---- server events ----

  async event (e) {
    const room = e.room_id !== undefined ? this.rooms.get(e.room_id) : null
    switch (e.type) {
      case 'entry':
        if (!room) return
        if (room.loaded && room.group) await this.apply(room, e)
        else room.stored(e.seq)
        if (this.active === room.id && this.visible()) await this.markRead(room)
        break
      case 'member_joined':
        if (!room) return
        if (await this.addMember(room, e.member)) {
          room.add({ kind: 'event', text: `${e.member.username} joined (fingerprint ${p.fingerprintDisplay(room.members.get(e.member.username).fingerprint)}).` })
          room.summary.members = room.members.size
        }
        break
      case 'member_left':
        if (!room) return
        room.members.delete(e.username)
        room.summary.members = room.members.size
        room.add({ kind: 'event', text: `${safeName(e.username)} ${{ kicked: 'was kicked', banned: 'was banned' }[e.reason] || 'left'}.` })
        await this.removeUser(room, e.username).catch((err) => this.notify(describe(err), 'error'))
        break
      default:
        if (!this.sharedEvent(room, e)) return
    }
    this.changed_()
  }

  // ---- requests from the UI ----

  async joined (reply, group = null) {
    if (!reply) return null
    await this.serial(async () => {
      const room = this.room(reply.room)
      if (group) room.group = group
      await this.setMembers(room, reply.members)
      if (group) await this.save(room)
    })
    this.select(reply.room.room_id)
    this.listRooms()
    return reply
  }

  async createRoom (name, password, hidden) {
    const groupId = crypto.getRandomValues(new Uint8Array(16))
    const { state, groupInfo, ratchetTree } = await m.createRoomGroup(this.device, groupId, this.config)
    const reply = await this.ask('create_room', {
      name, ...(password ? { password } : {}), hidden: !!hidden, group_info: groupInfo, ratchet_tree: ratchetTree
    })
    return this.joined(reply, { state, applied: 0, updated: Date.now(), told: new Set([p.hex(this.device.deviceId)]) })
  }

  async joinRoom (roomId, password) {
    return this.joined(await this.ask('join_room', { room_id: roomId, ...(password ? { password } : {}) }))
  }
}

/** (user, device id) of a leaf, as a string, or undefined. */
function leafDevice (state, index) {
  const leaf = m.leaves(state).find((l) => l.index === index)
  if (!leaf) return undefined
  try {
    const cert = m.decodeCertificate(leaf.certificate)
    return `${cert.user}/${p.hex(cert.device)}`
  } catch {
    return undefined
  }
}

function importIdentity (der) {
  return subtle.importKey('spki', der, PSS, false, ['verify'])
}

function fromHex (h) {
  return Uint8Array.from(h.match(/../g), (b) => parseInt(b, 16))
}
