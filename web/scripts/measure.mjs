// Numbers for BENCHMARKS.md: the page's weight, and what the client's
// cryptography costs in Debian's Chromium on this machine (median of runs).
//   cargo build --bins && cd web && npm run measure
import { readFileSync, readdirSync } from 'node:fs'
import { gzipSync } from 'node:zlib'
import * as t from '../test/e2e/harness.mjs'

const dist = new URL('../dist/', import.meta.url).pathname
for (const f of ['index.html', ...readdirSync(dist + 'assets').map((a) => 'assets/' + a)]) {
  const bytes = readFileSync(dist + f)
  console.log(`${f}: ${bytes.length} bytes, ${gzipSync(bytes).length} gzipped`)
}
const server = await t.startServer()
const browser = await t.launch()
try {
  const page = await t.openPage(browser, server.base)
  // The page's modules are bundled, so time the same WebCrypto calls here.
  const timings = await page.evaluate(async () => {
    const s = crypto.subtle
    const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]
    // Median over 5 batches of n calls (the page's clock is coarse).
    const time = async (n, fn) => {
      const xs = []
      for (let b = 0; b < 5; b++) {
        const t0 = performance.now()
        for (let i = 0; i < n; i++) await fn()
        xs.push((performance.now() - t0) / n)
      }
      return median(xs)
    }
    const rsa = (name, usages) => s.generateKey({ name, hash: 'SHA-256', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]) }, true, usages)
    const keygen = await time(2, async () => { await rsa('RSA-PSS', ['sign', 'verify']); await rsa('RSA-OAEP', ['encrypt', 'decrypt']) })
    const base = await s.importKey('raw', new TextEncoder().encode('a passphrase'), 'PBKDF2', false, ['deriveKey'])
    const pbkdf2 = await time(1, () => s.deriveKey({ name: 'PBKDF2', hash: 'SHA-256', salt: new Uint8Array(16), iterations: 600000 }, base, { name: 'AES-GCM', length: 256 }, false, ['wrapKey']))
    const pss = await rsa('RSA-PSS', ['sign', 'verify'])
    const oaep = await rsa('RSA-OAEP', ['encrypt', 'decrypt'])
    const data = new Uint8Array(300)
    const sign = await time(200, () => s.sign({ name: 'RSA-PSS', saltLength: 32 }, pss.privateKey, data))
    const sig = await s.sign({ name: 'RSA-PSS', saltLength: 32 }, pss.privateKey, data)
    const verify = await time(200, () => s.verify({ name: 'RSA-PSS', saltLength: 32 }, pss.publicKey, sig, data))
    const wrap = await time(200, () => s.encrypt({ name: 'RSA-OAEP' }, oaep.publicKey, new Uint8Array(32)))
    const wrapped = await s.encrypt({ name: 'RSA-OAEP' }, oaep.publicKey, new Uint8Array(32))
    const unwrap = await time(200, () => s.decrypt({ name: 'RSA-OAEP' }, oaep.privateKey, wrapped))
    return { keygen, pbkdf2, sign, verify, wrap, unwrap }
  })
  for (const [k, v] of Object.entries(timings)) console.log(`${k}: ${v.toFixed(2)} ms`)
} finally {
  await browser.close()
  await server.stop()
}
