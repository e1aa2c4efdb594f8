// @ts-check
// The wire protocol's cryptography (docs/PROTOCOL.md sections 2, 3 and 7),
// with nothing but WebCrypto and cborg. No DOM and no I/O, so the unit tests
// run it in Node against the shared test vectors.

import { encode as cborEncode, decode as cborDecode } from 'cborg'

const subtle = globalThis.crypto.subtle
const utf8 = new TextEncoder()

export const PSS = { name: 'RSA-PSS', hash: 'SHA-256' }
export const OAEP = { name: 'RSA-OAEP', hash: 'SHA-256' }
const PSS_PARAMS = { name: 'RSA-PSS', saltLength: 32 }
export const USERNAME = /^[a-z0-9][a-z0-9_-]{2,31}$/

// CBOR both ways. Decoding is strict: one item, nothing after it, no
// undefined, no tags; byte strings come back as Uint8Array.
export const encode = (value) => cborEncode(value)
export function decode (bytes) {
  return cborDecode(bytes, { allowUndefined: false, tags: [] })
}

export function concat (...parts) {
  const bytes = parts.map((p) => (typeof p === 'string' ? utf8.encode(p) : p))
  const out = new Uint8Array(bytes.reduce((n, b) => n + b.length, 0))
  let at = 0
  for (const b of bytes) { out.set(b, at); at += b.length }
  return out
}
const ZERO = new Uint8Array([0])

export function random (n) {
  return globalThis.crypto.getRandomValues(new Uint8Array(n))
}

export function hex (bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')
}

export function equalBytes (a, b) {
  if (a.length !== b.length) return false
  let diff = 0
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i]
  return diff === 0
}

export async function sha256 (bytes) {
  return new Uint8Array(await subtle.digest('SHA-256', bytes))
}

// SHA-256(sign_key DER || enc_key DER), as 64 hex digits.
export async function fingerprint (signDer, encDer) {
  return hex(await sha256(concat(signDer, encDer)))
}

// 64 hex digits in groups of 4, for people to compare.
export function fingerprintDisplay (fp) {
  return fp.match(/.{4}/g).join(' ')
}

// The `host` a login proof signs: location.host is already lowercase and
// drops the scheme's default port, as the protocol asks.
export function loginInput (host, username, nonce) {
  return concat('e2ee-chat login v2', ZERO, host, ZERO, username, ZERO, nonce)
}

export function messageInput (roomId, msgId, nonce, commitment, ciphertext) {
  return concat('e2ee-chat msg v2', ZERO, roomId, ZERO, msgId, nonce, commitment, ciphertext)
}

export function aad (roomId, msgId) {
  return concat(roomId, ZERO, msgId)
}

export async function keyCommitment (aesKey) {
  return sha256(concat('e2ee-chat key v2', ZERO, aesKey))
}

export async function sign (signKey, bytes) {
  return new Uint8Array(await subtle.sign(PSS_PARAMS, signKey, bytes))
}

export async function verify (signDer, signature, bytes) {
  const key = await subtle.importKey('spki', signDer, PSS, false, ['verify'])
  return subtle.verify(PSS_PARAMS, key, signature, bytes)
}

export async function wrapFor (encDer, aesKey) {
  const key = await subtle.importKey('spki', encDer, OAEP, false, ['encrypt'])
  return new Uint8Array(await subtle.encrypt({ name: 'RSA-OAEP' }, key, aesKey))
}

// A fresh user: both key pairs, extractable once so the profile can wrap them.
export async function generateKeys () {
  const gen = (alg, usages) => subtle.generateKey(
    { ...alg, modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]) }, true, usages)
  const sign = await gen(PSS, ['sign', 'verify'])
  const enc = await gen(OAEP, ['encrypt', 'decrypt'])
  const spki = async (k) => new Uint8Array(await subtle.exportKey('spki', k))
  return {
    sign: sign.privateKey,
    enc: enc.privateKey,
    signDer: await spki(sign.publicKey),
    encDer: await spki(enc.publicKey)
  }
}

// The plaintext: exactly one CBOR map {text, sent_at}.
export function encodePlaintext (text, sentAt) {
  return encode({ text, sent_at: sentAt })
}

export function decodePlaintext (bytes) {
  const value = decode(bytes) // throws on bytes after the map
  if (value === null || typeof value !== 'object' || Array.isArray(value) || value instanceof Uint8Array) {
    throw new Error('plaintext is not a map')
  }
  if (typeof value.text !== 'string') throw new Error('plaintext has no text')
  if (!Number.isSafeInteger(value.sent_at) || value.sent_at < 0) throw new Error('plaintext has no sent_at')
  return { text: value.text, sentAt: value.sent_at }
}

// Seals `text` for `members` (a list of {username, enc_key}): the body of a
// `send` request, without `id`.
export async function seal (signKey, roomId, members, text, sentAt = Date.now()) {
  const k = random(32)
  const nonce = random(12)
  const msgId = random(16)
  const aesKey = await subtle.importKey('raw', k, 'AES-GCM', false, ['encrypt'])
  const ciphertext = new Uint8Array(await subtle.encrypt(
    { name: 'AES-GCM', iv: nonce, additionalData: aad(roomId, msgId) },
    aesKey, encodePlaintext(text, sentAt)))
  const commitment = await keyCommitment(k)
  const keys = {}
  for (const m of members) keys[m.username] = await wrapFor(m.enc_key, k)
  const signature = await sign(signKey, messageInput(roomId, msgId, nonce, commitment, ciphertext))
  return { room_id: roomId, msg_id: msgId, nonce, key_commitment: commitment, ciphertext, keys, signature }
}

// Opens a `message` (or a history entry) with the sender's pinned sign key
// and our enc key. Throws with a reason on any failed check: a message that
// fails is shown as failed, never as text.
export async function open (encKey, senderSignDer, m) {
  if (!USERNAME.test(m.sender)) throw new Error('sender name is not valid')
  const ok = await verify(senderSignDer, m.signature,
    messageInput(m.room_id, m.msg_id, m.nonce, m.key_commitment, m.ciphertext))
  if (!ok) throw new Error('signature does not verify')
  let k
  try {
    k = new Uint8Array(await subtle.decrypt({ name: 'RSA-OAEP' }, encKey, m.key))
  } catch { throw new Error('the wrapped key does not open') }
  if (k.length !== 32) throw new Error('the wrapped key is not 32 bytes')
  if (!equalBytes(await keyCommitment(k), m.key_commitment)) throw new Error('the key commitment does not match')
  const aesKey = await subtle.importKey('raw', k, 'AES-GCM', false, ['decrypt'])
  let plain
  try {
    plain = new Uint8Array(await subtle.decrypt(
      { name: 'AES-GCM', iv: m.nonce, additionalData: aad(m.room_id, m.msg_id) }, aesKey, m.ciphertext))
  } catch { throw new Error('the ciphertext does not decrypt') }
  return decodePlaintext(plain)
}

// Control characters (C0, C1, DEL) and bidi overrides become visible
// escapes, and backslashes double so an escape cannot be forged (the same
// rule as the Rust client's display.rs).
export function escapeDisplay (s) {
  let out = ''
  for (const ch of s) {
    const c = ch.codePointAt(0)
    if (ch === '\\') out += '\\\\'
    else if (ch === '\n') out += '\\n'
    else if (ch === '\t') out += '\\t'
    else if (ch === '\r') out += '\\r'
    else if (c < 0x20 || (c >= 0x7f && c <= 0x9f) || (c >= 0x202a && c <= 0x202e) || (c >= 0x2066 && c <= 0x2069)) {
      out += '\\u{' + c.toString(16) + '}'
    } else out += ch
  }
  return out
}
