// Numbers for BENCHMARKS.md: the page's weight (what dist/ holds, and
// gzipped), and what ts-mls costs in
// Debian's Chromium on this machine, through the page's own MLS layer
// (src/mls.js, bundled here as the page bundles it): a device's external
// join into a room of N members, applying another device's commit,
// encrypting and opening a message. The page's CSP allows no inline
// script, so this one context bypasses it to load the layer.
//   cargo build --bins && cd web && npm run measure [-- 100]
import { readFileSync, readdirSync } from 'node:fs'
import { gzipSync } from 'node:zlib'
import * as esbuild from 'esbuild'
import * as t from '../test/e2e/harness.mjs'

const dist = new URL('../dist/', import.meta.url).pathname
for (const f of ['index.html', ...readdirSync(dist + 'assets').map((a) => 'assets/' + a)]) {
  const bytes = readFileSync(dist + f)
  console.log(`${f}: ${bytes.length} bytes, ${gzipSync(bytes).length} gzipped`)
}

const members = Number(process.argv[2] || 100)
const { outputFiles } = await esbuild.build({
  stdin: { contents: "import * as m from '../src/mls.js'; window.mls = m", resolveDir: new URL('.', import.meta.url).pathname },
  bundle: true, format: 'iife', write: false, logLevel: 'warning'
})
const server = await t.startServer()
const browser = await t.launch()
try {
  const context = await browser.newContext({ bypassCSP: true })
  const page = await context.newPage()
  await page.goto(server.base + '/')
  await page.addScriptTag({ content: outputFiles[0].text })
  const r = await page.evaluate(async (n) => {
    const m = window.mls
    const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)]
    const pair = await crypto.subtle.generateKey({ name: 'RSA-PSS', hash: 'SHA-256', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]) }, false, ['sign', 'verify'])
    const config = m.clientConfig(m.credentialCheck(() => pair.publicKey))
    const first = await m.newDevice('u0', pair.privateKey)
    let { state, groupInfo, ratchetTree } = await m.createRoomGroup(first, crypto.getRandomValues(new Uint8Array(16)), config)
    const states = [state]
    const joins = []
    const commits = []
    for (let i = 1; i < n; i++) {
      const d = await m.newDevice(`u${i}`, pair.privateKey)
      const t0 = performance.now()
      const j = await m.joinExternal(d, groupInfo, ratchetTree, config)
      const took = performance.now() - t0
      if (i >= n - 5) joins.push(took)
      // The member before applies the join (a commit it did not make).
      const prev = states[states.length - 1]
      const t1 = performance.now()
      const applied = await m.process(prev, j.commit)
      if (i >= n - 5) commits.push(performance.now() - t1)
      states.push(applied.state, j.state)
      states.splice(0, states.length - 2)
      ;({ groupInfo } = j)
      ratchetTree = m.treeOf(j.state)
    }
    const [other, last] = states
    const text = m.encodePlaintext('x'.repeat(100), Date.now())
    let sender = last
    const sealed = []
    const enc = []
    for (let i = 0; i < 50; i++) {
      const t0 = performance.now()
      const e = await m.encrypt(sender, text)
      enc.push(performance.now() - t0)
      sender = e.state
      sealed.push(e.message)
    }
    let reader = other
    const dec = []
    for (const msg of sealed) {
      const t0 = performance.now()
      const o = await m.process(reader, msg)
      dec.push(performance.now() - t0)
      reader = o.state
    }
    return { join: median(joins), commit: median(commits), encrypt: median(enc), decrypt: median(dec), tree: ratchetTree.length, message: sealed[0].length }
  }, members)
  console.log(`v3 in Chromium, ${members} members (medians): external join ${r.join.toFixed(1)} ms, applying another device's commit ${r.commit.toFixed(1)} ms, encrypt ${r.encrypt.toFixed(2)} ms, open ${r.decrypt.toFixed(2)} ms; tree ${r.tree} B, a 100-byte text ${r.message} B`)
} finally {
  await browser.close()
  await server.stop()
}
