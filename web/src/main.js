// @ts-check
// Boots the page: the welcome screen until the user has unlocked keys, then
// the chat, on a websocket to the server that served this page.

import './style.css'
import { showWelcome } from './welcome.js'
import { Chat } from './chat.js'
import { Chat3 } from './chat3.js'
import { serverProtocol } from './conn.js'
import { ChatView } from './ui.js'

const root = document.getElementById('app')
const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`

function welcome () {
  showWelcome(root, {
    url,
    onUnlocked: async (keys) => {
      const options = { url, host: location.host, visible: () => document.visibilityState !== 'hidden' }
      // The server speaks one protocol; the page speaks both until v2 goes.
      const chat = (await serverProtocol(url)) === 3 ? new Chat3(keys, options) : new Chat(keys, options)
      await chat.start()
      root.dataset.screen = 'chat'
      const view = new ChatView(root, chat, {
        onLock: () => { view.destroy(); chat.stop(); root.dataset.screen = 'welcome'; welcome() }
      })
    }
  }).catch((e) => { root.textContent = `This browser cannot run the client: ${e.message}` })
}

root.dataset.screen = 'welcome'
welcome()
