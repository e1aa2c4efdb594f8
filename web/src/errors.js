// @ts-check
// A sentence for every error code of docs/PROTOCOL.md section 6, plus the
// client's own ('disconnected').

const MESSAGES = {
  malformed: 'The server could not read that request (malformed). This is a bug in the web client.',
  unknown_type: 'The server does not know that request. It may run another protocol version.',
  too_large: 'That is too large for the server (message or request size limit).',
  rate_limited: 'Too many requests or attempts. Wait a moment and try again.',
  not_logged_in: 'You are not logged in yet. Wait for the connection to finish logging in.',
  already_logged_in: 'This connection is already logged in.',
  invalid_username: 'Usernames are 3 to 32 characters: lowercase letters, digits, "_" and "-", starting with a letter or digit.',
  invalid_key: 'The server refused the public keys (RSA 2048 to 4096 bits, exponent 65537).',
  username_taken: 'That username is taken. Pick another one.',
  unknown_user: 'There is no user with that name on this server.',
  no_challenge: 'The login challenge expired. Reconnecting will try again.',
  auth_failed: 'The server did not accept your login proof: these keys are not the ones registered for this username.',
  invalid_room_name: 'Room names are 1 to 64 letters, digits, spaces, "_", "-" or ".", with no space at either end.',
  invalid_password: 'Room passwords are 1 to 128 bytes.',
  room_exists: 'A room with that name exists already (names ignore case).',
  no_such_room: 'There is no room with that id.',
  wrong_password: 'Wrong room password.',
  banned: 'You are banned from that room.',
  room_full: 'That room is full.',
  too_many_rooms: 'You are in as many rooms as the server allows. Leave one first.',
  not_member: 'You are not a member of that room.',
  not_owner: 'Only the room\'s owner can do that.',
  no_such_member: 'That user is not a member of the room.',
  invalid_target: 'You cannot do that to yourself.',
  invalid_message: 'The server refused the message as invalid.',
  stale_epoch: 'The room\'s group moved on while this was sent. Try again.',
  commit_required: 'The room\'s group must first remove the devices of those who left. Try again.',
  invalid_group: 'The server refused the room\'s encryption data (MLS) as invalid. This is a bug in the web client.',
  not_allowed: 'The room does not allow that change to its group.',
  invalid_device: 'The server refused this browser\'s device certificate.',
  too_many_devices: 'You have as many devices as the server allows. Remove one you no longer use (the terminal client: e2ee-chat remove-device).',
  internal: 'The server had an internal error. Try again later.',
  disconnected: 'Not connected to the server. Reconnecting…'
}

export function describe (err) {
  if (err && err.code && MESSAGES[err.code]) return MESSAGES[err.code]
  return (err && err.message) || String(err)
}
