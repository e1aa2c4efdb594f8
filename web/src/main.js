// @ts-check
// Boots the page: the welcome screen until the user has unlocked keys, then
// the chat, on a websocket to the server that served this page.

import './style.css'
import { showWelcome } from './welcome.js'
import { Chat } from './chat.js'
import { ed25519Supported } from './mls.js'
import { ChatView } from './ui.js'

const root = document.getElementById('app')
const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`

function welcome () {
  showWelcome(root, {
    url,
    onUnlocked: async (keys) => {
      const options = { url, host: location.host, visible: () => document.visibilityState !== 'hidden' }
      const chat = new Chat(keys, options)
      await chat.start()
      root.dataset.screen = 'chat'
      const view = new ChatView(root, chat, {
        onLock: () => { view.destroy(); chat.stop(); root.dataset.screen = 'welcome'; welcome() }
      })
    }
  }).catch((e) => { root.textContent = `This browser cannot run the client: ${e.message}` })
}

// This browser's device key is Ed25519, which WebCrypto has only from
// Chromium 137 (Firefox 129, Safari 17): say so plainly up front.
async function boot () {
  root.dataset.screen = 'welcome'
  if (!await ed25519Supported()) {
    root.dataset.screen = 'unsupported'
    root.textContent = 'This browser cannot run the client: its WebCrypto has no Ed25519, which this server\'s encryption (MLS) needs. Use Chromium or Chrome 137 or later, Firefox 129 or later, or Safari 17 or later.'
    return
  }
  welcome()
}

boot()
