// Builds dist/: one hashed JS bundle and one hashed CSS file under assets/,
// and index.html naming them. The output is deterministic, so CI rebuilds it
// and fails when it differs from what is committed (the server embeds dist/).
import * as esbuild from 'esbuild'
import { readFileSync, writeFileSync, rmSync, mkdirSync } from 'node:fs'
import { basename } from 'node:path'

rmSync('dist', { recursive: true, force: true })
mkdirSync('dist/assets', { recursive: true })
const result = await esbuild.build({
  entryPoints: ['src/main.js'],
  bundle: true,
  format: 'esm',
  target: ['chrome110', 'firefox115', 'safari16'],
  minify: true,
  legalComments: 'none',
  entryNames: '[name]-[hash]',
  outdir: 'dist/assets',
  metafile: true,
  logLevel: 'warning'
})
const outputs = Object.keys(result.metafile.outputs)
const pick = (ext) => 'assets/' + basename(outputs.find((o) => o.endsWith(ext)))
const html = readFileSync('index.html', 'utf8').replace('%JS%', '/' + pick('.js')).replace('%CSS%', '/' + pick('.css'))
writeFileSync('dist/index.html', html)
console.log(`built dist/index.html, ${pick('.js')}, ${pick('.css')}`)
