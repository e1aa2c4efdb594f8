// The page's protocol v3 MLS layer (src/mls.js) against the shared v3
// vectors, in Node's WebCrypto: certificates byte for byte, the refused
// ones refused, the device key from its seed, the plaintext; and the
// external_pub wrap, which must never be applied twice.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import * as mls from 'ts-mls'
import * as m from '../../src/mls.js'
import { decode } from '../../src/proto.js'

const v = decode(readFileSync(new URL('../../../tests/vectors/v3.cbor', import.meta.url)))
const subtle = globalThis.crypto.subtle
const PSS = { name: 'RSA-PSS', hash: 'SHA-256' }
const identity = (name) => subtle.importKey('spki', v.users[name].identity_key, PSS, false, ['verify'])

test('the device certificate: input, exact bytes, check', async () => {
  const d = v.device
  const input = m.deviceSignatureInput(d.username, d.device_id, d.mls_key)
  assert.deepEqual(input, d.signature_input)
  const bytes = m.encodeCertificate({ sig: d.signature, user: d.username, device: d.device_id, mls_key: d.mls_key })
  assert.deepEqual(bytes, d.certificate)
  const cert = await m.checkCertificate(d.certificate, await identity('alice'))
  assert.equal(cert.user, 'alice')
})

test('every refused certificate is refused', async () => {
  const alice = await identity('alice')
  for (const [name, bytes] of Object.entries(v.device.refused)) {
    await assert.rejects(m.checkCertificate(bytes, alice), Error, name)
  }
})

test('the credential check: pinned key, certified leaf key', async () => {
  const alice = await identity('alice')
  const auth = m.credentialCheck((u) => (u === 'alice' ? alice : undefined))
  const credential = { credentialType: 'basic', identity: v.device.certificate }
  assert.ok(await auth.validateCredential(credential, v.device.mls_key))
  assert.ok(!await auth.validateCredential(credential, new Uint8Array(32)))
  assert.match(auth.lastRefusal, /certified/)
  const nobody = m.credentialCheck(() => undefined)
  assert.ok(!await nobody.validateCredential(credential, v.device.mls_key))
  assert.match(nobody.lastRefusal, /no pinned identity key/)
})

test('the Ed25519 key made from its seed is the certified one', async () => {
  const pkcs8 = new Uint8Array([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20, ...v.device.mls_private_seed])
  const key = await subtle.importKey('pkcs8', pkcs8, 'Ed25519', true, ['sign'])
  const jwk = await subtle.exportKey('jwk', key)
  assert.deepEqual(new Uint8Array(Buffer.from(jwk.x, 'base64url')), v.device.mls_key)
})

test('the plaintext and room ids', () => {
  const p = v.plaintext
  assert.deepEqual(m.encodePlaintext(p.text, p.sent_at), p.bytes)
  assert.deepEqual(m.decodePlaintext(p.bytes), { text: p.text, sentAt: p.sent_at })
  assert.equal(m.roomIdOfGroupId(v.room_id_of_group_id.group_id), v.room_id_of_group_id.room_id)
})

test('a new device certifies its own key, and the check accepts it', async () => {
  const pair = await subtle.generateKey({ ...PSS, modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]) }, false, ['sign', 'verify'])
  const d = await m.newDevice('carol', pair.privateKey)
  const cert = await m.checkCertificate(d.certificate, pair.publicKey)
  assert.deepEqual(cert.mls_key, d.mlsKey)
  assert.deepEqual(cert.device, d.deviceId)
})

test('the external_pub wrap cannot be applied twice, and ts-mls still needs it', async () => {
  const key = new Uint8Array(32).fill(7)
  const wrapped = m.prefixExternalPub(key)
  assert.equal(wrapped.length, 33)
  assert.throws(() => m.prefixExternalPub(wrapped), /applied twice/)
  assert.deepEqual(m.unprefixExternalPub(wrapped), key)
  assert.throws(() => m.unprefixExternalPub(key), /applied twice/)
  // ts-mls 1.6.4 writes the key bare. When an upgrade writes the prefix
  // itself, this fails: remove the wrap in src/mls.js then.
  const cs = await m.cipherSuite()
  const pair = await subtle.generateKey({ ...PSS, modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]) }, false, ['sign', 'verify'])
  const d = await m.newDevice('dave', pair.privateKey)
  const config = m.clientConfig(m.credentialCheck((u) => (u === 'dave' ? pair.publicKey : undefined)))
  const { state, groupInfo } = await m.createRoomGroup(d, new Uint8Array(16).fill(1), config)
  const theirs = await mls.createGroupInfoWithExternalPub(state, [], cs)
  assert.equal(theirs.extensions.find((e) => e.extensionType === 'external_pub').extensionData.length, 32)
  const [ours] = mls.decodeMlsMessage(groupInfo, 0)
  assert.equal(ours.groupInfo.extensions.find((e) => e.extensionType === 'external_pub').extensionData.length, 33)
})
