// The web client's protocol code against the shared v2 test vectors (made
// with Python's cryptography and cbor2), in Node's WebCrypto: the same
// calls the browser makes.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import * as p from '../../src/proto.js'

const v = p.decode(readFileSync(new URL('../../../tests/vectors/v2.cbor', import.meta.url)))
const user = (name) => v.users.find((u) => u.username === name)
const importPrivate = (der, alg, usages) => globalThis.crypto.subtle.importKey('pkcs8', der, alg, false, usages)

test('fingerprints match', async () => {
  for (const u of v.users) {
    const fp = await p.fingerprint(u.sign_key, u.enc_key)
    assert.equal(fp, u.fingerprint)
    assert.equal(p.fingerprintDisplay(fp), u.fingerprint_display)
  }
})

test('login input and signature', async () => {
  const { login } = v
  const input = p.loginInput(login.host, login.username, login.nonce)
  assert.deepEqual(input, login.signature_input)
  assert.ok(await p.verify(user('alice').sign_key, login.signature, input))
  const key = await importPrivate(user('alice').sign_private_pkcs8, p.PSS, ['sign'])
  const mine = await p.sign(key, input)
  assert.ok(await p.verify(user('alice').sign_key, mine, input))
  assert.ok(!await p.verify(user('alice').sign_key, mine, p.loginInput('evil.example', login.username, login.nonce)))
})

test('message: plaintext, commitment, aad, signature input, open', async () => {
  const m = v.message
  assert.deepEqual(p.encodePlaintext(m.text, m.sent_at), m.plaintext)
  assert.deepEqual(await p.keyCommitment(m.aes_key), m.key_commitment)
  assert.deepEqual(p.aad(m.room_id, m.msg_id), m.aad)
  assert.deepEqual(p.messageInput(m.room_id, m.msg_id, m.nonce, m.key_commitment, m.ciphertext), m.signature_input)
  for (const name of ['alice', 'bob']) {
    const enc = await importPrivate(user(name).enc_private_pkcs8, p.OAEP, ['decrypt'])
    const got = await p.open(enc, user('alice').sign_key, { ...m, key: m.keys[name] })
    assert.deepEqual(got, { text: m.text, sentAt: m.sent_at })
  }
  const bob = await importPrivate(user('bob').enc_private_pkcs8, p.OAEP, ['decrypt'])
  const wrongCommitment = { ...m, key: m.keys.bob, key_commitment: new Uint8Array(32) }
  await assert.rejects(p.open(bob, user('alice').sign_key, wrongCommitment), /signature/)
  await assert.rejects(p.open(bob, user('bob').sign_key, { ...m, key: m.keys.bob }), /signature/)
  await assert.rejects(p.open(bob, user('alice').sign_key, { ...m, key: m.keys.bob, sender: 'аlice' }), /name/)
})

test('seal then open round trip, and the commitment binds the key', async () => {
  const a = await p.generateKeys()
  const members = [{ username: 'alice', enc_key: a.encDer }]
  const body = await p.seal(a.sign, 'room-1', members, 'hi\u202e there', 1234)
  const got = await p.open(a.enc, a.signDer, { ...body, sender: 'alice', key: body.keys.alice })
  assert.deepEqual(got, { text: 'hi\u202e there', sentAt: 1234 })
  assert.equal(p.escapeDisplay(got.text), 'hi\\u{202e} there')
})

test('plaintext must be exactly one map', () => {
  assert.throws(() => p.decodePlaintext(new Uint8Array([...v.message.plaintext, 0])))
  assert.throws(() => p.decodePlaintext(p.encode(['x'])))
  assert.throws(() => p.decodePlaintext(p.encode({ text: 1, sent_at: 2 })))
})

test('display escapes like the Rust client', () => {
  assert.equal(p.escapeDisplay('a\rb'), 'a\\rb')
  assert.equal(p.escapeDisplay('\u001b[2K'), '\\u{1b}[2K')
  assert.equal(p.escapeDisplay('\u0085\u007f'), '\\u{85}\\u{7f}')
  assert.equal(p.escapeDisplay('a\\rb'), 'a\\\\rb')
  assert.equal(p.escapeDisplay('plain ✓ text'), 'plain ✓ text')
})
