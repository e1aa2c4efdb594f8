// @ts-check
// Keys at rest. A profile is the user's two private keys, each wrapped
// (AES-GCM `wrapKey`, PKCS#8) under a key derived from their passphrase with
// PBKDF2-SHA-256, plus the public keys. It lives in IndexedDB and exports to
// a JSON file that the terminal client imports too (`e2ee-chat import-profile`).
// Unlocking unwraps the private keys as non-extractable CryptoKeys.
//
// The same database keeps what this browser has learned: pinned identity
// keys (trust on first use) and the last read seq per room; and this
// browser's device key, group states and the texts it read, sealed under a
// state key that is itself wrapped under the passphrase's key.

import { PSS, OAEP, sign, verify, encode, decode } from './proto.js'

const subtle = globalThis.crypto.subtle
export const PROFILE_FORMAT = 'e2ee-chat-profile'
export const PBKDF2_ITERATIONS = 600000
// A hostile file must not make an import run for hours.
const MAX_ITERATIONS = 10000000
const MIN_ITERATIONS = 100000

const b64 = (bytes) => btoa(String.fromCharCode(...bytes))
const unb64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0))
const wrapAad = (username, which) => new TextEncoder().encode(`e2ee-chat profile v1\0${username}\0${which}`)

async function passphraseKey (passphrase, salt, iterations) {
  const base = await subtle.importKey('raw', new TextEncoder().encode(passphrase), 'PBKDF2', false, ['deriveKey'])
  return subtle.deriveKey({ name: 'PBKDF2', hash: 'SHA-256', salt, iterations },
    base, { name: 'AES-GCM', length: 256 }, false, ['wrapKey', 'unwrapKey'])
}

// Wraps freshly generated (extractable) keys into a profile record.
export async function wrapProfile (username, keys, passphrase, server) {
  const salt = crypto.getRandomValues(new Uint8Array(16))
  const kek = await passphraseKey(passphrase, salt, PBKDF2_ITERATIONS)
  const wrap = async (key, which, pub) => {
    const iv = crypto.getRandomValues(new Uint8Array(12))
    const wrapped = new Uint8Array(await subtle.wrapKey('pkcs8', key, kek,
      { name: 'AES-GCM', iv, additionalData: wrapAad(username, which) }))
    return { public: b64(pub), iv: b64(iv), wrapped: b64(wrapped) }
  }
  return {
    format: PROFILE_FORMAT,
    version: 1,
    username,
    ...(server ? { server } : {}),
    kdf: { name: 'PBKDF2', hash: 'SHA-256', iterations: PBKDF2_ITERATIONS, salt: b64(salt) },
    cipher: 'AES-256-GCM',
    sign_key: await wrap(keys.sign, 'sign_key', keys.signDer),
    enc_key: await wrap(keys.enc, 'enc_key', keys.encDer)
  }
}

// Checks a profile's shape (from a file: it may be anything).
export function checkProfile (p) {
  const fail = (why) => { throw new Error(`not an e2ee-chat profile: ${why}`) }
  if (!p || p.format !== PROFILE_FORMAT) fail('wrong format')
  if (p.version !== 1) fail(`version ${p.version} is not supported`)
  if (typeof p.username !== 'string' || !/^[a-z0-9][a-z0-9_-]{2,31}$/.test(p.username)) fail('bad username')
  const k = p.kdf
  if (!k || k.name !== 'PBKDF2' || k.hash !== 'SHA-256') fail('unknown key derivation')
  if (!Number.isSafeInteger(k.iterations) || k.iterations < MIN_ITERATIONS || k.iterations > MAX_ITERATIONS) fail('iterations out of range')
  if (p.cipher !== 'AES-256-GCM') fail('unknown cipher')
  for (const which of ['sign_key', 'enc_key']) {
    const w = p[which]
    if (!w || [w.public, w.iv, w.wrapped].some((x) => typeof x !== 'string' || x.length > 8192)) fail(`bad ${which}`)
  }
  return p
}

// Unwraps a profile's keys as non-extractable; a wrong passphrase (or a
// tampered file) fails AES-GCM's tag check.
export async function unlock (profile, passphrase) {
  checkProfile(profile)
  const kek = await passphraseKey(passphrase, unb64(profile.kdf.salt), profile.kdf.iterations)
  const unwrap = (which, alg, usages) => subtle.unwrapKey('pkcs8', unb64(profile[which].wrapped), kek,
    { name: 'AES-GCM', iv: unb64(profile[which].iv), additionalData: wrapAad(profile.username, which) },
    alg, false, usages)
  let signKey, encKey
  try {
    signKey = await unwrap('sign_key', PSS, ['sign'])
    encKey = await unwrap('enc_key', OAEP, ['decrypt'])
  } catch {
    throw new Error('wrong passphrase (or a damaged profile)')
  }
  const signDer = unb64(profile.sign_key.public)
  const encDer = unb64(profile.enc_key.public)
  // The public halves are not encrypted: prove they belong to the private ones.
  const probe = crypto.getRandomValues(new Uint8Array(32))
  if (!await verify(signDer, await sign(signKey, probe), probe)) throw new Error('the profile\'s sign key does not match')
  const pub = await subtle.importKey('spki', encDer, OAEP, false, ['encrypt'])
  const back = new Uint8Array(await subtle.decrypt({ name: 'RSA-OAEP' }, encKey,
    await subtle.encrypt({ name: 'RSA-OAEP' }, pub, probe)))
  if (back.length !== 32 || !back.every((b, i) => b === probe[i])) throw new Error('the profile\'s enc key does not match')
  // The passphrase's key stays for this session's own state (`stateKey`).
  return { username: profile.username, sign: signKey, enc: encKey, signDer, encDer, kek }
}

/**
 * The key of this browser's own state for `username` (its device key,
 * group states and the texts it read): made here once, kept in
 * IndexedDB wrapped under the passphrase's key, never exported (another
 * browser is another device). A key that no longer unwraps (the profile was
 * replaced, with another passphrase) is replaced: what it sealed is then
 * unreadable, and this browser starts as a new device.
 * @param {string} username @param {CryptoKey} kek
 * @returns {Promise<CryptoKey>}
 */
export async function stateKey (username, kek) {
  const id = `state-key/${username}`
  const params = (iv) => ({ name: 'AES-GCM', iv, additionalData: wrapAad(username, 'state_key') })
  const stored = await kv.get(id)
  if (stored) {
    try {
      return await subtle.unwrapKey('raw', stored.wrapped, kek, params(stored.iv), { name: 'AES-GCM' }, false, ['encrypt', 'decrypt'])
    } catch {}
  }
  const key = await subtle.generateKey({ name: 'AES-GCM', length: 256 }, true, ['encrypt', 'decrypt'])
  const iv = crypto.getRandomValues(new Uint8Array(12))
  const wrapped = new Uint8Array(await subtle.wrapKey('raw', key, kek, params(iv)))
  await kv.put(id, { iv, wrapped })
  return key
}

/**
 * `value` (CBOR-encodable) sealed under `key` for the record `name`.
 * @param {CryptoKey} key @param {string} name @param {any} value
 */
export async function seal (key, name, value) {
  const iv = crypto.getRandomValues(new Uint8Array(12))
  const ct = new Uint8Array(await subtle.encrypt({ name: 'AES-GCM', iv, additionalData: new TextEncoder().encode(name) }, key, encode(value)))
  return { iv, ct }
}

/**
 * What `seal` sealed, or undefined for nothing or for a record this key
 * cannot open.
 * @param {CryptoKey} key @param {string} name @param {any} sealed
 */
export async function unseal (key, name, sealed) {
  if (!sealed?.iv || !sealed?.ct) return undefined
  try {
    return decode(new Uint8Array(await subtle.decrypt({ name: 'AES-GCM', iv: sealed.iv, additionalData: new TextEncoder().encode(name) }, key, sealed.ct)))
  } catch {
    return undefined
  }
}

// IndexedDB, promisified: two object stores, `profiles` (by username) and
// `kv` (pins, announced recipients, read marks).
let dbPromise
function db () {
  dbPromise ??= new Promise((resolve, reject) => {
    const req = indexedDB.open('e2ee-chat', 1)
    req.onupgradeneeded = () => {
      req.result.createObjectStore('profiles', { keyPath: 'username' })
      req.result.createObjectStore('kv')
    }
    req.onsuccess = () => resolve(req.result)
    req.onerror = () => reject(req.error)
  })
  return dbPromise
}

async function run (store, mode, fn) {
  const d = await db()
  return new Promise((resolve, reject) => {
    const tx = d.transaction(store, mode)
    const req = fn(tx.objectStore(store))
    tx.oncomplete = () => resolve(req?.result)
    tx.onerror = () => reject(tx.error)
    tx.onabort = () => reject(tx.error)
  })
}

export const profiles = {
  list: () => run('profiles', 'readonly', (s) => s.getAll()),
  put: (p) => run('profiles', 'readwrite', (s) => s.put(p))
}

export const kv = {
  get: (key) => run('kv', 'readonly', (s) => s.get(key)),
  put: (key, value) => run('kv', 'readwrite', (s) => s.put(value, key)),
  /** Several keys in one transaction: all are written, or none. @param {[string, any][]} entries */
  putAll: (entries) => run('kv', 'readwrite', (s) => {
    let last
    for (const [key, value] of entries) last = s.put(value, key)
    return last
  })
}
