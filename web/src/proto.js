// @ts-check
// The protocol's bytes outside MLS (docs/PROTOCOL.md sections 2, 3 and 7):
// CBOR frames, the identity key's signed inputs and fingerprint, and the
// display escaping, with nothing but WebCrypto and cborg. No DOM and no I/O,
// so the unit tests run it in Node against the shared test vectors. The MLS
// side is mls.js.

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

export async function sha256 (bytes) {
  return new Uint8Array(await subtle.digest('SHA-256', bytes))
}

// SHA-256 of an identity key's DER, as 64 hex digits.
export async function fingerprint (identityDer) {
  return hex(await sha256(identityDer))
}

// 64 hex digits in groups of 4, for people to compare.
export function fingerprintDisplay (fp) {
  return fp.match(/.{4}/g).join(' ')
}

// What an identity key signs (PROTOCOL.md section 3, Account). The `host`
// is what a proof signs: location.host is already lowercase and drops the
// scheme's default port, as the protocol asks.
export function registerInput (host, username) {
  return concat('e2ee-chat register v3', ZERO, host, ZERO, username)
}

export function loginInput (host, username, nonce) {
  return concat('e2ee-chat login v3', ZERO, host, ZERO, username, ZERO, nonce)
}

export async function sign (signKey, bytes) {
  return new Uint8Array(await subtle.sign(PSS_PARAMS, signKey, bytes))
}

export async function verify (signDer, signature, bytes) {
  const key = await subtle.importKey('spki', signDer, PSS, false, ['verify'])
  return subtle.verify(PSS_PARAMS, key, signature, bytes)
}

// A fresh user: the identity key (RSA-PSS) and the profile format's second
// key (RSA-OAEP; version 3 does not use it, but the profile file the page
// and the terminal client share holds two), extractable once so the
// profile can wrap them.
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
