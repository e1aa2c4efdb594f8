// A device for Node tests, on the page's MLS layer
// (src/mls.js, ts-mls): a websocket with request ids (Node's WebSocket,
// `--experimental-websocket` on Node 20), the account steps, and one room's
// group applied in log order with section 7's checks. What the page will
// do, without the page, so the two libraries can be tested against each
// other before the page speaks v3.
import * as m from '../../src/mls.js'
import { encode, decode, concat } from '../../src/proto.js'

const subtle = globalThis.crypto.subtle
const PSS = { name: 'RSA-PSS', hash: 'SHA-256' }
const PSS_PARAMS = { name: 'RSA-PSS', saltLength: 32 }
const ZERO = new Uint8Array([0])

export class Device3 {
  static async open (url, username) {
    if (typeof WebSocket === 'undefined') throw new Error('no WebSocket: on Node 20, run node with --experimental-websocket')
    const ws = new WebSocket(url, 'e2ee-chat.v3')
    ws.binaryType = 'arraybuffer'
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject })
    const pair = await subtle.generateKey({ ...PSS, modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]) }, true, ['sign', 'verify'])
    const d = new Device3(ws, new URL(url).host, username, pair)
    d.identityDer = new Uint8Array(await subtle.exportKey('spki', pair.publicKey))
    return d
  }

  constructor (ws, host, username, pair) {
    this.ws = ws
    this.host = host
    this.username = username
    this.pair = pair
    this.nextId = 1
    this.waiting = new Map()
    this.events = []
    /** Identity keys pinned, by user (CryptoKey). */
    this.pins = new Map([[username, pair.publicKey]])
    this.auth = m.credentialCheck((u) => this.pins.get(u))
    this.config = m.clientConfig(this.auth)
    /** The room's group, the last seq applied, what was read. */
    this.state = undefined
    this.applied = 0
    this.read = []
    ws.onmessage = (e) => {
      const msg = decode(new Uint8Array(e.data))
      const waiter = msg.id !== undefined && this.waiting.get(msg.id)
      if (waiter) { this.waiting.delete(msg.id); waiter(msg) } else this.events.push(msg)
    }
  }

  request (frame) {
    const id = this.nextId++
    return new Promise((resolve) => {
      this.waiting.set(id, resolve)
      this.ws.send(encode({ ...frame, id }))
    })
  }

  async ok (frame) {
    const reply = await this.request(frame)
    if (reply.type === 'error') throw new Error(`${frame.type}: ${reply.code} ${reply.message}`)
    return reply
  }

  sign (input) {
    return subtle.sign(PSS_PARAMS, this.pair.privateKey, input).then((s) => new Uint8Array(s))
  }

  async register () {
    const proof = await this.sign(concat('e2ee-chat register v3', ZERO, this.host, ZERO, this.username))
    await this.ok({ type: 'register', username: this.username, identity_key: this.identityDer, proof })
  }

  async login () {
    this.device ??= await m.newDevice(this.username, this.pair.privateKey)
    const { nonce } = await this.ok({ type: 'login', username: this.username })
    const signature = await this.sign(concat('e2ee-chat login v3', ZERO, this.host, ZERO, this.username, ZERO, nonce))
    return this.ok({ type: 'prove', signature, device: this.device.certificate })
  }

  async pin (members) {
    for (const member of members) {
      if (!this.pins.has(member.username)) {
        this.pins.set(member.username, await subtle.importKey('spki', member.identity_key, PSS, false, ['verify']))
      }
    }
  }

  /** `join_room`, then this device enters the group by external commit. */
  async join (roomId) {
    this.roomId = roomId
    const joined = await this.ok({ type: 'join_room', room_id: roomId })
    await this.pin(joined.members)
    const gs = await this.ok({ type: 'group_state', room_id: roomId })
    const { state, commit, groupInfo } = await m.joinExternal(this.device, gs.group_info, gs.ratchet_tree, this.config)
    const done = await this.ok({ type: 'commit', room_id: roomId, commit, group_info: groupInfo })
    this.state = state
    this.applied = done.seq
    return done
  }

  /** An update commit (and Removes), merged once `committed`. */
  async commit (remove = []) {
    await this.sync()
    const { next, commit, groupInfo } = await m.commit(this.state, remove)
    const done = await this.ok({ type: 'commit', room_id: this.roomId, commit, group_info: groupInfo })
    this.state = next
    this.applied = done.seq
    return done
  }

  async send (text) {
    await this.sync()
    const { state, message } = await m.encrypt(this.state, m.encodePlaintext(text, Date.now()))
    this.state = state
    const msgId = globalThis.crypto.getRandomValues(new Uint8Array(16))
    return this.ok({ type: 'send', room_id: this.roomId, msg_id: msgId, message })
  }

  /** Applies the room's log from history, in order, with the checks. */
  async sync () {
    for (;;) {
      const page = await this.ok({ type: 'history', room_id: this.roomId, after_seq: this.applied, limit: 200 })
      for (const e of page.entries) await this.apply(e)
      if (!page.has_more || page.entries.length === 0) return
    }
  }

  async apply (e) {
    if (e.seq !== this.applied + 1) throw new Error(`entry ${e.seq} after ${this.applied}`)
    this.applied = e.seq
    if (m.equal(e.device_id, this.device.deviceId)) return
    if (e.kind === 'commit') {
      // Users seen for the first time are pinned from the member list.
      const { members } = await this.ok({ type: 'get_members', room_id: this.roomId })
      await this.pin(members)
    }
    const r = await m.process(this.state, e.data)
    this.state = r.state
    if (r.kind === 'message') {
      const cert = m.decodeCertificate(r.credential)
      const senderOk = cert.user === e.sender && m.equal(cert.device, e.device_id)
      const p = m.decodePlaintext(r.plaintext)
      this.read.push({ seq: e.seq, sender: e.sender, senderOk, text: p?.text })
    } else {
      // Section 7: every leaf checks against the pins.
      for (const leaf of m.leaves(this.state)) {
        const cert = m.decodeCertificate(leaf.certificate)
        const key = this.pins.get(cert.user)
        if (!key) throw new Error(`no pin for ${cert.user}`)
        await m.checkCertificate(leaf.certificate, key)
      }
    }
  }

  close () { this.ws.close() }
}
