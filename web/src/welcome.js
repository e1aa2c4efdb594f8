// @ts-check
// The first screen: unlock a stored profile with its passphrase, create an
// account (keys made here, registered with the server, stored wrapped), or
// import a profile file exported by this page or by the terminal client.

import { h } from './dom.js'
import { generateKeys, fingerprint, fingerprintDisplay, sign, registerInput } from './proto.js'
import { Conn } from './conn.js'
import { profiles, wrapProfile, checkProfile, unlock } from './keystore.js'
import { describe } from './errors.js'

const MIN_PASSPHRASE = 8

export async function profileFile (username) {
  const p = (await profiles.list()).find((x) => x.username === username)
  return p ? new Blob([JSON.stringify(p, null, 2) + '\n'], { type: 'application/json' }) : null
}

// Registers on a connection of its own: registering does not log in. The
// signing key is the identity key, registered with a proof that this
// browser holds it.
async function register (url, username, keys) {
  const fields = {
    username,
    identity_key: keys.signDer,
    proof: await sign(keys.sign, registerInput(new URL(url).host, username))
  }
  return new Promise((resolve, reject) => {
    const conn = new Conn(url, {
      onOpen: () => conn.request('register', fields).then(resolve, reject).finally(() => conn.close()),
      onEvent: () => {},
      onState: (state) => { if (state === 'closed' && !conn.stopped) { conn.close(); reject(new Error('Could not reach the server.')) } }
    })
  })
}

// Draws the screen; calls onUnlocked(keys) once the user has keys in hand.
export async function showWelcome (root, { url, onUnlocked }) {
  const stored = await profiles.list()
  const status = h('p.status#welcome-status', { role: 'status', 'aria-live': 'polite' })
  const busy = async (form, text, action) => {
    const buttons = form.querySelectorAll('button, input')
    buttons.forEach((b) => { b.disabled = true })
    status.textContent = text
    status.className = 'status'
    try {
      await action()
    } catch (e) {
      status.textContent = describe(e)
      status.className = 'status error'
    } finally {
      buttons.forEach((b) => { b.disabled = false })
    }
  }

  const unlockForm = stored.length
    ? h('form.card#unlock', { onsubmit: (e) => {
      e.preventDefault()
      const f = e.target
      const profile = stored.find((p) => p.username === f.username.value)
      const pass = f.passphrase.value
      busy(f, 'Unlocking…', async () => onUnlocked(await unlock(profile, pass)))
    } },
    h('h2', { text: 'Welcome back' }),
    h('label', { text: 'Profile' }, h('select', { name: 'username' },
      ...stored.map((p) => h('option', { value: p.username, text: p.username })))),
    h('label', { text: 'Passphrase' }, h('input', { name: 'passphrase', type: 'password', required: true, autocomplete: 'current-password', autofocus: true })),
    h('button', { type: 'submit', text: 'Unlock' }))
    : null

  const createForm = h('form.card#create', { onsubmit: (e) => {
    e.preventDefault()
    const f = e.target
    const username = f.username.value.trim()
    if (f.passphrase.value !== f.confirm.value) { status.textContent = 'The passphrases differ.'; status.className = 'status error'; return }
    busy(f, 'Making your keys…', async () => {
      const keys = await generateKeys()
      status.textContent = 'Registering…'
      await register(url, username, keys)
      const profile = await wrapProfile(username, keys, f.passphrase.value, url)
      await profiles.put(profile)
      status.textContent = 'Logging in…'
      onUnlocked(await unlock(profile, f.passphrase.value))
    })
  } },
  h('h2', { text: stored.length ? 'New account' : 'Create your account' }),
  h('p.muted', { text: 'Your keys are made in this browser and never leave it unencrypted. The passphrase protects them here; there is no way to recover it.' }),
  h('label', { text: 'Username' }, h('input', { name: 'username', required: true, pattern: '[a-z0-9][a-z0-9_\\-]{2,31}', autocomplete: 'username', title: '3 to 32 of a-z, 0-9, _ and -' })),
  h('label', { text: 'Passphrase' }, h('input', { name: 'passphrase', type: 'password', required: true, minlength: MIN_PASSPHRASE, autocomplete: 'new-password' })),
  h('label', { text: 'Passphrase again' }, h('input', { name: 'confirm', type: 'password', required: true, minlength: MIN_PASSPHRASE, autocomplete: 'new-password' })),
  h('button', { type: 'submit', text: 'Create account' }))

  const importForm = h('form.card#import', { onsubmit: (e) => {
    e.preventDefault()
    const f = e.target
    busy(f, 'Checking the profile…', async () => {
      const file = f.file.files[0]
      if (!file || file.size > 65536) throw new Error('Pick a profile file (a small .json file).')
      let profile
      try { profile = checkProfile(JSON.parse(await file.text())) } catch (err) { throw new Error(err.message.startsWith('not an') ? err.message : 'That file is not an e2ee-chat profile.') }
      const keys = await unlock(profile, f.passphrase.value)
      // Another identity under the same name is replaced only when the
      // user says so: its keys would be gone from this browser.
      const existing = (await profiles.list()).find((p) => p.username === profile.username)
      const same = existing && existing.sign_key.public === profile.sign_key.public && existing.enc_key.public === profile.enc_key.public
      if (existing && !same) {
        const fp = fingerprintDisplay(await fingerprint(keys.signDer))
        if (!confirm(`This browser already holds other keys for ${profile.username}. Replace them with the imported keys (fingerprint ${fp})? The stored keys are lost unless you exported them.`)) {
          throw new Error('Nothing was imported: the stored profile was kept.')
        }
      }
      await profiles.put(profile)
      onUnlocked(keys)
    })
  } },
  h('h2', { text: 'Import a profile' }),
  h('p.muted', { text: 'A file exported from this page on another device, or by the terminal client (e2ee-chat export-profile).' }),
  h('label', { text: 'Profile file' }, h('input', { name: 'file', type: 'file', accept: '.json,application/json', required: true })),
  h('label', { text: 'Its passphrase' }, h('input', { name: 'passphrase', type: 'password', required: true, autocomplete: 'current-password' })),
  h('button', { type: 'submit', text: 'Import' }))

  root.replaceChildren(h('main.welcome', {},
    h('h1', { text: 'e2ee-chat' }),
    h('p.lead', { text: 'Group chat the server cannot read.' }),
    status, unlockForm, createForm, importForm))
}
