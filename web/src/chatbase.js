// @ts-check
// The logged-in client's plumbing that is not MLS (`Chat`, chat.js, extends
// it): the promise queue every event and change runs through, notices, the
// room directory, leaving, the owner operations, the server events about
// rooms and members, and a room's timeline (`Room`). No DOM.

import { describe } from './errors.js'
import { USERNAME } from './proto.js'

export class ChatBase {
  /**
   * @param {{url: string, host: string, onChange?: (() => void) | null,
   *   visible?: () => boolean}} options
   *   `visible` says whether the user can see the page (messages in the open
   *   room count as read only then).
   */
  constructor ({ url, host, onChange = null, visible = () => true }) {
    this.url = url
    this.host = host
    this.visible = visible
    /** Called after every change of state; the view redraws. */
    this.onChange = onChange
    /** @type {Map<string, any>} room_id -> Room */
    this.rooms = new Map()
    /** @type {string | null} */
    this.active = null
    this.status = 'connecting'
    /** @type {{id: number, text: string, kind: string}[]} */
    this.notices = []
    this.directory = null // list_rooms reply
    this.read = new Map() // room_id -> seq read
    /** @type {Promise<unknown>} */
    this.queue = Promise.resolve()
    this.noticeId = 0
    /** @type {any} */
    this.conn = null
  }

  stop () { this.conn?.close() }

  /**
   * Runs `fn` after everything queued before it. Resolves to its result, or
   * to undefined when it failed (the failure is shown as a notice).
   * @template T
   * @param {() => T | Promise<T>} fn
   * @returns {Promise<T | undefined>}
   */
  serial (fn) {
    const run = this.queue.then(fn).catch((e) => {
      this.notify(describe(e), 'error')
      return undefined
    })
    this.queue = run
    return run
  }

  changed_ () { this.onChange?.() }

  notify (text, kind = 'info') {
    const id = ++this.noticeId
    this.notices.push({ id, text, kind })
    if (this.notices.length > 5) this.notices.shift()
    this.changed_()
    setTimeout(() => { this.notices = this.notices.filter((n) => n.id !== id); this.changed_() }, 8000)
  }

  unread (room) {
    const read = this.read.get(room.id) || 0
    return Math.max(0, (room.summary.last_seq || 0) - read)
  }

  dropRoom (roomId, why) {
    this.rooms.delete(roomId)
    if (this.active === roomId) this.active = null
    this.notify(why)
  }

  /**
   * The events about rooms and members: owner, presence, renames, deletions
   * and removals. False for any other event.
   */
  sharedEvent (room, e) {
    switch (e.type) {
      case 'owner_changed':
        if (!room) return true
        room.summary.owner = e.owner
        room.add({ kind: 'event', text: `${safeName(e.owner)} is now the owner.` })
        return true
      case 'presence': {
        const m = room?.members.get(e.username)
        if (m) m.online = e.online
        return true
      }
      case 'room_renamed':
        if (!room) return true
        room.add({ kind: 'event', text: `The room was renamed from "${room.summary.name}" to "${e.name}".` })
        room.summary.name = e.name
        return true
      case 'room_deleted':
        if (room) this.dropRoom(room.id, `The room "${room.summary.name}" was deleted.`)
        return true
      case 'removed':
        if (room) this.dropRoom(room.id, `You were ${e.reason === 'banned' ? 'banned' : 'kicked'} from "${room.summary.name}".`)
        return true
      default:
        return false
    }
  }

  // ---- requests from the UI ----

  // Runs a request; on error, tells the user and answers null.
  async ask (type, fields) {
    try {
      return await this.conn.request(type, fields)
    } catch (e) {
      this.notify(describe(e), 'error')
      return null
    }
  }

  async listRooms () {
    const reply = await this.ask('list_rooms', { limit: 100 })
    if (reply) { this.directory = reply; this.changed_() }
    return reply
  }

  async leave (roomId) {
    if (await this.ask('leave_room', { room_id: roomId })) {
      this.dropRoom(roomId, 'You left the room.')
      this.listRooms()
    }
  }

  // kick, ban, unban, rename_room, set_password, delete_room.
  async owner (type, fields, done) {
    const reply = await this.ask(type, fields)
    if (reply && done) this.notify(done)
    if (reply && type === 'delete_room') this.dropRoom(fields.room_id, 'You deleted the room.')
    const room = this.rooms.get(fields.room_id)
    if (reply && room && type === 'set_password') { room.summary.has_password = 'password' in fields; this.changed_() }
    return reply
  }
}

// A name from the server for an event line: the UI escapes what it shows.
export function safeName (name) {
  return typeof name === 'string' && USERNAME.test(name) ? name : '(a member with an invalid name)'
}

// One room as the view draws it: its summary, members and timeline.
export class Room {
  constructor (summary) {
    this.summary = summary
    this.id = summary.room_id
    this.members = new Map()
    this.entries = [] // timeline, by seq; events without seq go at the end
    this.seen = new Set()
    this.warned = new Set() // username/fingerprint of key changes told here
    this.loaded = false
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
