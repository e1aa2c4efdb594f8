// The page's protocol bytes outside MLS (src/proto.js) against the shared
// vectors, in Node's WebCrypto: the same calls the browser makes.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import * as p from '../../src/proto.js'

const v = p.decode(readFileSync(new URL('../../../tests/vectors/v3.cbor', import.meta.url)))
const importPrivate = (der) => globalThis.crypto.subtle.importKey('pkcs8', der, p.PSS, false, ['sign'])

test('identity key fingerprints match', async () => {
  for (const u of Object.values(v.users)) {
    const fp = await p.fingerprint(u.identity_key)
    assert.equal(fp, u.fingerprint)
    assert.equal(p.fingerprintDisplay(fp), u.fingerprint_display)
  }
})

test('the register proof and the login signature: inputs byte for byte', async () => {
  const alice = v.users.alice
  const { register, login } = v
  const proofInput = p.registerInput(register.host, 'alice')
  assert.deepEqual(proofInput, register.proof_input)
  assert.ok(await p.verify(alice.identity_key, register.proof, proofInput))
  const input = p.loginInput(login.host, login.username, login.nonce)
  assert.deepEqual(input, login.signature_input)
  assert.ok(await p.verify(alice.identity_key, login.signature, input))
  const key = await importPrivate(alice.identity_private_pkcs8)
  const mine = await p.sign(key, input)
  assert.ok(await p.verify(alice.identity_key, mine, input))
  // Signed for another host, the proof does not transfer.
  assert.ok(!await p.verify(alice.identity_key, mine, p.loginInput('evil.example', login.username, login.nonce)))
})

test('frames decode strictly: one item, nothing after it', () => {
  assert.deepEqual(p.decode(p.encode({ type: 'ping', id: 1 })), { type: 'ping', id: 1 })
  assert.throws(() => p.decode(new Uint8Array([...p.encode({ type: 'ping' }), 0])))
})

test('display escapes like the Rust client', () => {
  assert.equal(p.escapeDisplay('a\rb'), 'a\\rb')
  assert.equal(p.escapeDisplay('\u001b[2K'), '\\u{1b}[2K')
  assert.equal(p.escapeDisplay('\u0085\u007f'), '\\u{85}\\u{7f}')
  assert.equal(p.escapeDisplay('a\\rb'), 'a\\\\rb')
  assert.equal(p.escapeDisplay('hi\u202e there'), 'hi\\u{202e} there')
  assert.equal(p.escapeDisplay('plain ✓ text'), 'plain ✓ text')
})
