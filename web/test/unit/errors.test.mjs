// Every error code of docs/PROTOCOL.md has a sentence for people.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { describe } from '../../src/errors.js'

const codesIn = (text) => [...text.matchAll(/`([a-z_]+)`/g)].map((m) => m[1])

test('every protocol error code has its own message', () => {
  const spec = readFileSync(new URL('../../../docs/PROTOCOL.md', import.meta.url), 'utf8')
  // The project notes list section 6 in full (version 2's codes, less
  // `stale_members`, plus version 3's).
  const start = spec.indexOf('- Error codes (section 6 in full):')
  const codes = codesIn(spec.slice(start, spec.indexOf('\n- ', start + 1)))
  assert.ok(codes.length >= 32, codes.join())
  const v3 = spec.slice(spec.indexOf('## 6. Errors'), spec.indexOf('## 7.'))
  const v2 = spec.slice(spec.indexOf('### 6. Errors'), spec.indexOf('### 7.'))
  const named = new Set([...codesIn(v3), ...codesIn(v2)])
  named.delete('stale_members')
  for (const c of ['code', 'message', 'members', 'epoch', 'remove', 'id']) named.delete(c)
  assert.deepEqual([...named].filter((c) => !codes.includes(c)), [], 'the full list has every code')
  for (const code of codes) {
    const text = describe({ code, message: 'RAW' })
    assert.notEqual(text, 'RAW', `no message for ${code}`)
  }
  assert.equal(describe({ code: 'something_new', message: 'server words' }), 'server words')
})
