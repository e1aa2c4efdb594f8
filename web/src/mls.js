// @ts-check
// The page's MLS side (docs/PROTOCOL.md sections 2, 3
// and 7) on ts-mls over WebCrypto: a device (its own Ed25519 key and the
// certificate by which the user's RSA-PSS identity key vouches for it), a
// room's group (create, join by external commit, commit, encrypt, open),
// and section 7's credential check in place of ts-mls's `authService`
// (whose default accepts every credential). No DOM and no I/O, so Node runs
// it against the shared vectors and against the Rust client.
//
// The choices match the terminal client's (openmls): ciphersuite 1,
// commits as PublicMessage with every proposal by value, no ratchet-tree
// extension, secrets kept for 2 past epochs, no padding.
//
// ts-mls 1.6.4 writes and reads the GroupInfo `external_pub` extension
// without the length prefix RFC 9420 §12.4.3.2 gives it (`opaque
// HPKEPublicKey<V>`), so openmls cannot parse its GroupInfo and it cannot
// join from openmls's. Both directions are wrapped here (`groupInfoOf`,
// `joinExternal`); each wrap refuses input that is already in the form it
// makes, and a unit test fails once ts-mls writes the prefix itself, so the
// wrap cannot be applied twice unnoticed.

import * as mls from 'ts-mls'
import { createGroupInfo } from 'ts-mls/createCommit.js'
import { defaultClientConfig } from 'ts-mls/clientConfig.js'
import { encodeRatchetTree, decodeRatchetTree } from 'ts-mls/ratchetTree.js'
import { verifyGroupInfoSignature } from 'ts-mls/groupInfo.js'
import { unprotectPrivateMessage } from 'ts-mls/messageProtection.js'
import { encode as cborEncode, decode as cborDecode } from 'cborg'

const subtle = globalThis.crypto.subtle
const utf8 = new TextEncoder()

export const CIPHERSUITE = 'MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519'
export const MAX_PAST_EPOCHS = 2
export const DEVICE_ID_LEN = 16
export const MLS_KEY_LEN = 32
const PSS_PARAMS = { name: 'RSA-PSS', saltLength: 32 }
const DEVICE_CONTEXT = 'e2ee-chat device v3'

/** @type {Promise<mls.CiphersuiteImpl> | undefined} */
let suite
/** The ciphersuite's implementation (made once). */
export function cipherSuite () {
  suite ??= mls.getCiphersuiteImpl(mls.getCiphersuiteFromName(CIPHERSUITE))
  return suite
}

/**
 * Whether this browser's WebCrypto has Ed25519 (Chromium 137 or later,
 * Firefox 129, Safari 17): a device's key is one.
 */
export async function ed25519Supported () {
  try {
    await subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify'])
    return true
  } catch {
    return false
  }
}

/** @param {...(Uint8Array|string)} parts */
function concat (...parts) {
  const bytes = parts.map((p) => (typeof p === 'string' ? utf8.encode(p) : p))
  const out = new Uint8Array(bytes.reduce((n, b) => n + b.length, 0))
  let at = 0
  for (const b of bytes) { out.set(b, at); at += b.length }
  return out
}

/** @param {Uint8Array} a @param {Uint8Array} b */
export function equal (a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i])
}

// ------------------------------------------------------------ certificates

/**
 * `"e2ee-chat device v3" || 0 || user || 0 || device || mls_key`.
 * @param {string} user @param {Uint8Array} device @param {Uint8Array} mlsKey
 */
export function deviceSignatureInput (user, device, mlsKey) {
  const zero = new Uint8Array([0])
  return concat(DEVICE_CONTEXT, zero, user, zero, device, mlsKey)
}

/**
 * @typedef {{ user: string, device: Uint8Array, mls_key: Uint8Array, sig: Uint8Array }} Certificate
 */

/**
 * The one encoding: a CBOR map of `sig`, `user`, `device`, `mls_key` in that
 * order (cborg's canonical order is that one: shorter keys first).
 * @param {Certificate} c
 */
export function encodeCertificate (c) {
  return cborEncode({ sig: c.sig, user: c.user, device: c.device, mls_key: c.mls_key })
}

/**
 * Reads a certificate in its exact encoding (anything else, or another
 * order, extra keys, trailing bytes, fails), or throws.
 * @param {Uint8Array} bytes
 * @returns {Certificate}
 */
export function decodeCertificate (bytes) {
  let v
  try {
    v = cborDecode(bytes, { allowUndefined: false, tags: [] })
  } catch {
    throw new Error('not a device certificate in its exact encoding')
  }
  const ok = v && typeof v === 'object' && typeof v.user === 'string' &&
    v.sig instanceof Uint8Array && v.device instanceof Uint8Array && v.mls_key instanceof Uint8Array
  if (!ok) throw new Error('not a device certificate in its exact encoding')
  const cert = { user: v.user, device: v.device, mls_key: v.mls_key, sig: v.sig }
  if (!equal(encodeCertificate(cert), bytes)) throw new Error('not a device certificate in its exact encoding')
  return cert
}

/**
 * Section 7's check of a certificate: exact encoding, lengths, signed by
 * `identityKey` (the pinned RSA-PSS key of its user, a CryptoKey). Throws
 * with the reason.
 * @param {Uint8Array} bytes @param {CryptoKey} identityKey
 */
export async function checkCertificate (bytes, identityKey) {
  const cert = decodeCertificate(bytes)
  if (cert.device.length !== DEVICE_ID_LEN || cert.mls_key.length !== MLS_KEY_LEN) {
    throw new Error('the certificate has the wrong lengths')
  }
  const input = deviceSignatureInput(cert.user, cert.device, cert.mls_key)
  if (!await subtle.verify(PSS_PARAMS, identityKey, new Uint8Array(cert.sig), input)) {
    throw new Error(`the certificate is not signed by ${cert.user}'s identity key`)
  }
  return cert
}

/**
 * The `authService` of section 7: a leaf's credential is a certificate
 * signed by the pinned identity key of its user, for the leaf's key.
 * `pins(user)` gives that key (a CryptoKey) or undefined. The last refusal's
 * reason is kept in `lastRefusal`.
 * @param {(user: string) => CryptoKey | undefined} pins
 */
export function credentialCheck (pins) {
  const service = {
    lastRefusal: '',
    /** @param {mls.Credential} credential @param {Uint8Array} signatureKey */
    async validateCredential (credential, signatureKey) {
      try {
        if (credential.credentialType !== 'basic') throw new Error('not a basic credential')
        const cert = decodeCertificate(credential.identity)
        const key = pins(cert.user)
        if (key === undefined) throw new Error(`no pinned identity key for ${cert.user}`)
        await checkCertificate(credential.identity, key)
        if (!equal(cert.mls_key, signatureKey)) throw new Error("the leaf's key is not the certified one")
        return true
      } catch (e) {
        service.lastRefusal = e instanceof Error ? e.message : String(e)
        return false
      }
    }
  }
  return service
}

// ------------------------------------------------------------ devices

/**
 * @typedef {{ user: string, deviceId: Uint8Array, signKey: Uint8Array,
 *   mlsKey: Uint8Array, certificate: Uint8Array }} Device
 */

/**
 * A new device of `user`: a fresh Ed25519 key, certified by `identityKey`
 * (the user's RSA-PSS private CryptoKey).
 * @param {string} user @param {CryptoKey} identityKey
 * @returns {Promise<Device>}
 */
export async function newDevice (user, identityKey) {
  const cs = await cipherSuite()
  const { signKey, publicKey } = await cs.signature.keygen()
  const deviceId = globalThis.crypto.getRandomValues(new Uint8Array(DEVICE_ID_LEN))
  const input = deviceSignatureInput(user, deviceId, publicKey)
  const sig = new Uint8Array(await subtle.sign(PSS_PARAMS, identityKey, input))
  const certificate = encodeCertificate({ sig, user, device: deviceId, mls_key: publicKey })
  return { user, deviceId, signKey, mlsKey: publicKey, certificate }
}

/**
 * The configuration every group of this device uses, with section 7's
 * credential check.
 * @param {{ validateCredential: (c: mls.Credential, k: Uint8Array) => Promise<boolean> }} auth
 * @returns {mls.ClientConfig}
 */
export function clientConfig (auth) {
  return {
    ...defaultClientConfig,
    authService: auth,
    keyRetentionConfig: { ...defaultClientConfig.keyRetentionConfig, retainKeysForEpochs: MAX_PAST_EPOCHS },
    paddingConfig: { kind: 'alwaysPad', paddingLength: 0 }
  }
}

/** A key package for this device's leaf (its key, its certificate). @param {Device} d */
async function keyPackage (d) {
  const cs = await cipherSuite()
  return mls.generateKeyPackageWithKey(
    { credentialType: 'basic', identity: d.certificate },
    mls.defaultCapabilities(), mls.defaultLifetime, [],
    { signKey: d.signKey, publicKey: d.mlsKey }, cs)
}

// ------------------------------------------------------------ external_pub

/** RFC 9420's `opaque<V>` length prefix (QUIC varint) of a 32-byte key. */
const KEY_PREFIX = 0x20

/** @param {Uint8Array} key */
export function prefixExternalPub (key) {
  if (key.length !== 32) throw new Error('external_pub: expected a bare 32-byte key (applied twice?)')
  return concat(new Uint8Array([KEY_PREFIX]), key)
}

/** @param {Uint8Array} data */
export function unprefixExternalPub (data) {
  if (data.length !== 33 || data[0] !== KEY_PREFIX) {
    throw new Error('external_pub: expected a length-prefixed 32-byte key (applied twice?)')
  }
  return data.slice(1)
}

/**
 * The GroupInfo of `state`'s epoch, as openmls reads it: `external_pub`
 * with its length prefix, no tree. MLSMessage bytes.
 * @param {mls.ClientState} state
 */
export async function groupInfoOf (state) {
  const cs = await cipherSuite()
  const pair = await cs.hpke.deriveKeyPair(state.keySchedule.externalSecret)
  const pub = await cs.hpke.exportPublicKey(pair.publicKey)
  const gi = await createGroupInfo(state.groupContext, state.confirmationTag, state,
    [{ extensionType: 'external_pub', extensionData: prefixExternalPub(pub) }], cs)
  return mls.encodeMlsMessage({ version: 'mls10', wireformat: 'mls_group_info', groupInfo: gi })
}

/** The ratchet tree as `group_state` serves it. @param {mls.ClientState} state */
export function treeOf (state) {
  return encodeRatchetTree(state.ratchetTree)
}

// ------------------------------------------------------------ groups

/**
 * A new group whose only leaf is `d`: what `create_room` uploads.
 * @param {Device} d @param {Uint8Array} groupId @param {mls.ClientConfig} config
 */
export async function createRoomGroup (d, groupId, config) {
  const cs = await cipherSuite()
  const { publicPackage, privatePackage } = await keyPackage(d)
  const state = await mls.createGroup(groupId, publicPackage, privatePackage, [], cs, config)
  return { state, groupInfo: await groupInfoOf(state), ratchetTree: treeOf(state) }
}

/** @param {Uint8Array} bytes */
function decodeMessage (bytes) {
  const decoded = mls.decodeMlsMessage(bytes, 0)
  if (decoded === undefined || decoded[1] !== bytes.length) throw new Error('not one MLS message')
  return decoded[0]
}

/**
 * Joins by external commit from what `group_state` serves (`resync`: this
 * device's old leaf is removed). The GroupInfo's signature and its signer's
 * credential are checked on the bytes as served; ts-mls then gets the key
 * without its prefix, and checks the same signature over the same content.
 * The state is only this device's until the server says `committed`.
 * @param {Device} d @param {Uint8Array} groupInfoBytes @param {Uint8Array} treeBytes
 * @param {mls.ClientConfig} config @param {boolean} [resync]
 */
export async function joinExternal (d, groupInfoBytes, treeBytes, config, resync = false) {
  const cs = await cipherSuite()
  const message = decodeMessage(groupInfoBytes)
  if (message.wireformat !== 'mls_group_info') throw new Error('not a GroupInfo')
  const served = message.groupInfo
  const decodedTree = decodeRatchetTree(treeBytes, 0)
  if (decodedTree === undefined || decodedTree[1] !== treeBytes.length) throw new Error('not a ratchet tree')
  const tree = decodedTree[0]
  const signer = tree[served.signer * 2]
  if (signer?.nodeType !== 'leaf') throw new Error('the GroupInfo signer is not a leaf')
  const signerKey = signer.leaf.signaturePublicKey
  if (!await config.authService.validateCredential(signer.leaf.credential, signerKey)) {
    throw new Error('the GroupInfo signer fails the credential check')
  }
  if (!await verifyGroupInfoSignature(served, signerKey, cs.signature)) {
    throw new Error('the GroupInfo signature does not verify')
  }
  const extensions = served.extensions.map((e) => e.extensionType === 'external_pub'
    ? { ...e, extensionData: unprefixExternalPub(e.extensionData) }
    : e)
  const bare = { ...served, extensions }
  // The one signature ts-mls will check again over the bare form: record
  // the exact bytes it verifies, and accept that signature for exactly
  // those bytes and that key.
  /** @type {Uint8Array} */
  let signedBare = new Uint8Array()
  await verifyGroupInfoSignature(bare, signerKey, {
    ...cs.signature,
    verify: async (_k, msg) => { signedBare = msg; return true }
  })
  const verify = cs.signature.verify.bind(cs.signature)
  const wrapped = {
    ...cs,
    signature: {
      ...cs.signature,
      /** @param {Uint8Array} k @param {Uint8Array} msg @param {Uint8Array} sig */
      verify: async (k, msg, sig) => (equal(sig, served.signature) && equal(k, signerKey) && equal(msg, signedBare)) ||
        verify(k, msg, sig)
    }
  }
  const { publicPackage, privatePackage } = await keyPackage(d)
  const { publicMessage, newState } = await mls.joinGroupExternal(
    bare, publicPackage, privatePackage, resync, wrapped, tree, config)
  const commit = mls.encodeMlsMessage({ version: 'mls10', wireformat: 'mls_public_message', publicMessage })
  return { state: newState, commit, groupInfo: await groupInfoOf(newState) }
}

/**
 * A member commit with these Removes and an update path, as a
 * PublicMessage, with the next epoch's GroupInfo. `state` stays the
 * device's until the server says `committed`; then it takes `next`.
 * @param {mls.ClientState} state @param {number[]} remove
 */
export async function commit (state, remove = []) {
  const cs = await cipherSuite()
  const extraProposals = remove.map((removed) => /** @type {mls.Proposal} */ ({ proposalType: 'remove', remove: { removed } }))
  const result = await mls.createCommit({ state, cipherSuite: cs }, {
    wireAsPublicMessage: true,
    extraProposals,
    ratchetTreeExtension: false
  })
  return { next: result.newState, commit: mls.encodeMlsMessage(result.commit), groupInfo: await groupInfoOf(result.newState) }
}

/**
 * An application message: the PrivateMessage bytes for `send`.
 * @param {mls.ClientState} state @param {Uint8Array} plaintext
 */
export async function encrypt (state, plaintext) {
  const cs = await cipherSuite()
  const { newState, privateMessage } = await mls.createApplicationMessage(state, plaintext, cs)
  const bytes = mls.encodeMlsMessage({ version: 'mls10', wireformat: 'mls_private_message', privateMessage })
  return { state: newState, message: bytes }
}

/**
 * What an entry's MLS message does to `state`: a commit merged
 * (`kind: 'commit'`), or another device's message opened with the
 * certificate of its MLS sender (`kind: 'message'`), for the sender check.
 * @param {mls.ClientState} state @param {Uint8Array} bytes
 * @returns {Promise<{ kind: 'commit', state: mls.ClientState } |
 *   { kind: 'message', state: mls.ClientState, plaintext: Uint8Array, credential: Uint8Array }>}
 */
export async function process (state, bytes) {
  const cs = await cipherSuite()
  const message = decodeMessage(bytes)
  if (message.wireformat === 'mls_public_message') {
    const r = await mls.processPublicMessage(state, message.publicMessage, mls.emptyPskIndex, cs)
    return { kind: 'commit', state: r.newState }
  }
  if (message.wireformat !== 'mls_private_message') throw new Error('not a PublicMessage or a PrivateMessage')
  const pm = message.privateMessage
  if (pm.contentType !== 'application') throw new Error('a handshake as a PrivateMessage')
  // ts-mls's processPrivateMessage does not say who sent it: open it the
  // same way, keeping the sender's leaf.
  const current = pm.epoch === state.groupContext.epoch
  const past = current ? undefined : state.historicalReceiverData.get(pm.epoch)
  if (!current && past === undefined) throw new Error('a message of an epoch this device has no secrets for')
  const from = past ?? {
    senderDataSecret: state.keySchedule.senderDataSecret,
    secretTree: state.secretTree,
    ratchetTree: state.ratchetTree,
    groupContext: state.groupContext
  }
  const opened = await unprotectPrivateMessage(from.senderDataSecret, pm, from.secretTree, from.ratchetTree,
    from.groupContext, state.clientConfig.keyRetentionConfig, cs)
  const content = opened.content.content
  if (content.contentType !== 'application' || content.sender.senderType !== 'member') {
    throw new Error('not an application message from a member')
  }
  const leaf = from.ratchetTree[content.sender.leafIndex * 2]
  if (leaf?.nodeType !== 'leaf' || leaf.leaf.credential.credentialType !== 'basic') {
    throw new Error('the sender is not a leaf with a basic credential')
  }
  const next = past === undefined
    ? { ...state, secretTree: opened.tree }
    : { ...state, historicalReceiverData: new Map(state.historicalReceiverData).set(pm.epoch, { ...past, secretTree: opened.tree }) }
  return { kind: 'message', state: next, plaintext: content.applicationData, credential: leaf.leaf.credential.identity }
}

/** The group's epoch. @param {mls.ClientState} state */
export const epochOf = (state) => Number(state.groupContext.epoch)

/** The group's id. @param {mls.ClientState} state */
export const groupIdOf = (state) => state.groupContext.groupId

/**
 * Every leaf: (index, certificate bytes, signature key), for section 7's
 * tree check and the device announcements.
 * @param {mls.ClientState} state
 */
export function leaves (state) {
  const out = []
  state.ratchetTree.forEach((node, i) => {
    if (i % 2 === 0 && node?.nodeType === 'leaf' && node.leaf.credential.credentialType === 'basic') {
      out.push({ index: i / 2, certificate: node.leaf.credential.identity, key: node.leaf.signaturePublicKey })
    }
  })
  return out
}

/** This device's leaf index. @param {mls.ClientState} state */
export const ownLeaf = (state) => state.privatePath.leafIndex

// ------------------------------------------------------------ plaintext

/** Section 2: a CBOR map of `text` and `sent_at`. @param {string} text @param {number} sentAt */
export function encodePlaintext (text, sentAt) {
  return cborEncode({ text, sent_at: sentAt })
}

/** @param {Uint8Array} bytes @returns {{ text: string, sentAt: number } | undefined} */
export function decodePlaintext (bytes) {
  try {
    const v = cborDecode(bytes, { allowUndefined: false, tags: [] })
    if (typeof v?.text !== 'string' || typeof v.sent_at !== 'number') return undefined
    return { text: v.text, sentAt: v.sent_at }
  } catch {
    return undefined
  }
}

/** `"r-"` and the hex of a 16-byte group id. @param {Uint8Array} groupId */
export function roomIdOfGroupId (groupId) {
  return 'r-' + Array.from(groupId, (b) => b.toString(16).padStart(2, '0')).join('')
}
