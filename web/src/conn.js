// @ts-check
// One websocket to the server: binary CBOR frames, requests with ids whose
// replies resolve promises, events to a callback, and reconnection with
// exponential backoff and jitter (0.5 s doubling to 30 s).

import { encode, decode } from './proto.js'

export const SUBPROTOCOL = 'e2ee-chat.v3'

export class ServerError extends Error {
  constructor (reply) {
    super(reply.message || reply.code)
    this.code = reply.code
    // `stale_epoch` says the epoch, `commit_required` the leaves.
    this.epoch = reply.epoch
    this.remove = reply.remove
  }
}

export class Conn {
  /**
   * @param {string} url
   * @param {{onOpen: () => void, onEvent: (frame: any) => void,
   *   onState: (state: 'connecting' | 'open' | 'closed', detail?: any) => void}} handlers
   *   onOpen runs on every (re)connect; onEvent gets pushes.
   */
  constructor (url, { onOpen, onEvent, onState }) {
    this.url = url
    this.onOpen = onOpen
    this.onEvent = onEvent
    this.onState = onState
    this.nextId = 1
    this.pending = new Map()
    this.backoff = 500
    this.stopped = false
    this.connect()
  }

  connect () {
    this.onState('connecting')
    const ws = new WebSocket(this.url, SUBPROTOCOL)
    ws.binaryType = 'arraybuffer'
    this.ws = ws
    ws.onopen = () => {
      this.backoff = 500
      this.onState('open')
      this.onOpen()
    }
    ws.onmessage = (e) => {
      if (!(e.data instanceof ArrayBuffer)) return
      let frame
      try { frame = decode(new Uint8Array(e.data)) } catch { return }
      if (!frame || typeof frame !== 'object') return
      const waiter = frame.id !== undefined && this.pending.get(frame.id)
      if (waiter) {
        this.pending.delete(frame.id)
        if (frame.type === 'error') waiter.reject(new ServerError(frame))
        else waiter.resolve(frame)
      } else {
        this.onEvent(frame)
      }
    }
    ws.onclose = (e) => {
      for (const w of this.pending.values()) w.reject(new ServerError({ code: 'disconnected', message: 'the connection closed' }))
      this.pending.clear()
      if (this.ws !== ws) return
      this.onState('closed', e.code)
      if (this.stopped) return
      const wait = this.backoff * (0.5 + Math.random() / 2)
      this.backoff = Math.min(this.backoff * 2, 30000)
      this.timer = setTimeout(() => this.connect(), wait)
    }
  }

  request (type, fields = {}) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new ServerError({ code: 'disconnected', message: 'not connected to the server' }))
    }
    const id = this.nextId++
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject })
      // An absent optional key is left out, never sent as CBOR undefined.
      const body = Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined))
      this.ws.send(encode({ type, id, ...body }))
    })
  }

  close () {
    this.stopped = true
    clearTimeout(this.timer)
    this.ws?.close()
  }
}
