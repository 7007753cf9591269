// Mint roomchat tokens in a Node backend with node:crypto only (no dependencies).
//
// Call roomchatToken() after your own login has identified the user, and give the result to the
// page (/rooms/<room>#token=...) or to your own client. Run as a script to print one:
//   ROOMCHAT_JWT_SECRET=... node mint.mjs alice lobby
//   ROOMCHAT_JWT_PRIVATE_KEY_FILE=app-private.pem node mint.mjs alice lobby
import { KeyObject, createHmac, createPrivateKey, sign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

const b64url = (data) => Buffer.from(data).toString('base64url');

/**
 * A signed token for `user` to join `rooms` (['*']: every room) for `ttlSeconds`.
 * Give `secret` (HS256, the server's ROOMCHAT_JWT_SECRET) or `privateKey` (a PEM string or
 * KeyObject: Ed25519 signs EdDSA, RSA signs RS256; the server holds only the public key).
 * `kid` names a key of the server's ROOMCHAT_JWT_KEYS (key rotation).
 */
export function roomchatToken({ user, name, rooms, ttlSeconds = 15 * 60, admin = false,
  secret, privateKey, kid, now = Date.now() }) {
  if (Boolean(secret) === Boolean(privateKey)) throw new Error('give secret or privateKey');
  const key = privateKey instanceof KeyObject ? privateKey : privateKey && createPrivateKey(privateKey);
  const alg = secret ? 'HS256' : { ed25519: 'EdDSA', rsa: 'RS256' }[key.asymmetricKeyType];
  if (!alg) throw new Error(`unsupported key type ${key.asymmetricKeyType}`);
  const iat = Math.floor(now / 1000);
  const header = { alg, typ: 'JWT', ...(kid ? { kid } : {}) };
  const claims = {
    sub: user, // your user id: 1-64 characters, stable
    name, // what the room shows
    rooms,
    aud: 'roomchat', // ROOMCHAT_JWT_AUDIENCE
    iss: 'roomchat', // ROOMCHAT_JWT_ISSUER
    iat,
    exp: iat + ttlSeconds,
    ...(admin ? { admin: true } : {}), // may open the /admin page
  };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const signature = alg === 'HS256'
    ? createHmac('sha256', secret).update(input).digest()
    : sign(alg === 'EdDSA' ? null : 'sha256', Buffer.from(input), key);
  return `${input}.${b64url(signature)}`;
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [user, room] = process.argv.slice(2);
  const keyFile = process.env.ROOMCHAT_JWT_PRIVATE_KEY_FILE;
  const secret = process.env.ROOMCHAT_JWT_SECRET;
  const fail = (line) => { console.error(`mint.mjs: ${line}`); process.exit(1); };
  if (!user || !room) fail('usage: node mint.mjs USER ROOM');
  if (!keyFile && !secret) {
    fail('set ROOMCHAT_JWT_SECRET (the secret the roomchat server has) or '
      + 'ROOMCHAT_JWT_PRIVATE_KEY_FILE (your private key; the server has its public half)');
  }
  let privateKey;
  try {
    privateKey = keyFile && readFileSync(keyFile);
  } catch (error) {
    fail(`cannot read ROOMCHAT_JWT_PRIVATE_KEY_FILE ${keyFile}: ${error.code}`);
  }
  console.log(roomchatToken({
    user, name: user, rooms: [room], ...(privateKey ? { privateKey } : { secret }),
  }));
}
