// node --test (npm test). With ROOMCHAT_URL set (tests/integration/test_integration_docs.py starts a
// server), a minted token must also get a ticket from that real server.
import assert from 'node:assert/strict';
import { createHmac, generateKeyPairSync, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { roomchatToken } from './mint.mjs';

const SECRET = 'a-secret-of-at-least-32-characters-0123456789';
const parts = (token) => token.split('.').map((p, i) => (i < 2 ? JSON.parse(Buffer.from(p, 'base64url')) : p));

test('HS256 token carries the claims roomchat requires', () => {
  const token = roomchatToken({ user: 'u42', name: 'Ada', rooms: ['lobby'], ttlSeconds: 600,
    secret: SECRET, now: 1_700_000_000_500 });
  const [header, claims, signature] = parts(token);
  assert.deepEqual(header, { alg: 'HS256', typ: 'JWT' });
  assert.deepEqual(claims, { sub: 'u42', name: 'Ada', rooms: ['lobby'], aud: 'roomchat',
    iss: 'roomchat', iat: 1_700_000_000, exp: 1_700_000_600 });
  const input = token.slice(0, token.lastIndexOf('.'));
  assert.equal(signature, createHmac('sha256', SECRET).update(input).digest('base64url'));
});

test('kid and admin are added only when asked for', () => {
  const [header, claims] = parts(roomchatToken({ user: 'ops', name: 'Ops', rooms: ['*'],
    admin: true, kid: '2025-11', secret: SECRET }));
  assert.equal(header.kid, '2025-11');
  assert.equal(claims.admin, true);
});

for (const [type, alg, digest] of [['ed25519', 'EdDSA', null], ['rsa', 'RS256', 'sha256']]) {
  test(`${alg} token verifies with the public key only`, () => {
    const { publicKey, privateKey } = generateKeyPairSync(type, type === 'rsa' ? { modulusLength: 2048 } : {});
    const token = roomchatToken({ user: 'u1', name: 'U', rooms: ['lobby'], privateKey });
    assert.equal(parts(token)[0].alg, alg);
    const cut = token.lastIndexOf('.');
    const ok = verify(digest, Buffer.from(token.slice(0, cut)), publicKey,
      Buffer.from(token.slice(cut + 1), 'base64url'));
    assert.ok(ok);
  });
}

test('secret or private key, not both', () => {
  assert.throws(() => roomchatToken({ user: 'u', name: 'U', rooms: ['r'] }), /secret or privateKey/);
});

test('a real roomchat server accepts the token', { skip: !process.env.ROOMCHAT_URL && 'no ROOMCHAT_URL' }, async () => {
  const keyFile = process.env.ROOMCHAT_JWT_PRIVATE_KEY_FILE;
  const token = roomchatToken({ user: 'node-user', name: 'Node', rooms: ['lobby'],
    ...(keyFile ? { privateKey: readFileSync(keyFile) } : { secret: process.env.ROOMCHAT_JWT_SECRET }) });
  const res = await fetch(`${process.env.ROOMCHAT_URL}/rooms/lobby/ticket`, {
    method: 'POST', headers: { authorization: `Bearer ${token}` } });
  const body = await res.json();
  assert.equal(res.status, 200, JSON.stringify(body));
  assert.equal(typeof body.ticket, 'string');
  const refused = await fetch(`${process.env.ROOMCHAT_URL}/rooms/lobby/ticket`, {
    method: 'POST', headers: { authorization: `Bearer ${token.slice(0, -4)}AAAA` } });
  assert.equal(refused.status, 401);
});
