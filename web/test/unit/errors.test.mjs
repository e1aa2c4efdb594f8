// Every error code of docs/PROTOCOL.md section 6 has a sentence for people.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { describe } from '../../src/errors.js'

test('every protocol error code has its own message', () => {
  const spec = readFileSync(new URL('../../../docs/PROTOCOL.md', import.meta.url), 'utf8')
  const section = spec.slice(spec.indexOf('## 6. Errors'), spec.indexOf('## 7.'))
  const codes = [...section.matchAll(/`([a-z_]+)`/g)].map((m) => m[1]).filter((c) => !['code', 'message', 'members'].includes(c))
  assert.ok(codes.length >= 27, codes.join())
  for (const code of codes) {
    const text = describe({ code, message: 'RAW' })
    assert.notEqual(text, 'RAW', `no message for ${code}`)
  }
  assert.equal(describe({ code: 'something_new', message: 'server words' }), 'server words')
})
