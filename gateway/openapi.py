"""The OpenAPI 3.1 description of ``/api/v1`` (``gateway.api``), served at
``/api/v1/openapi.json`` and validated by the tests."""

from __future__ import annotations

from typing import Any

from gateway.inputs import MAX_INT
from rooms.config import MAX_FILES_PER_MESSAGE, MAX_MENTIONS
from rooms.protocol import MAX_BAN_UNTIL, MAX_EMOJI_CHARS, MAX_SEQ


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(schema: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _ref(schema)}}}


def _refusals(*statuses: str) -> dict[str, Any]:
    texts = {"400": "Bad request (`bad_request`, `empty_text`, `text_too_long`, "
                    "`too_many_files`)",
             "401": "Missing or invalid credential (`missing_token`, `invalid_token`, "
                    "`token_expired`, `token_revoked`)",
             "403": "A user token (`api_scope_required`) or a room the credential does not "
                    "allow (`room_forbidden`); for a change to a message: not the user's "
                    "(`forbidden`), or an edit after the edit window (`edit_window_passed`)",
             "404": "Not found (`bad_room`, `not_found`, `not_banned`; a message's file: "
                    "`file_not_found`)",
             "409": "The message's state refuses it: deleted (`already_deleted`), or a new "
                    "reaction beyond the most a message may carry (`too_many_reactions`); "
                    "a file another room's, attached already or too old "
                    "(`file_not_attachable`)",
             "429": "Over the credential's rate (`rate_limited`; see `Retry-After`)",
             "503": "Storage unavailable, draining, busy or too many rooms (`unavailable`, "
                    "`draining`, `busy`, `too_many_rooms`)"}
    return {s: {"description": texts[s], "content": {"application/json": {
        "schema": _ref("Error")}}} for s in ("401", "403", "429", *statuses)}


_ROOM = {"name": "room", "in": "path", "required": True,
         "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}
_USER = {"name": "user", "in": "path", "required": True,
         "description": "A user id: 1 to 64 characters, no control character (as a token's sub)",
         "schema": {"type": "string", "minLength": 1, "maxLength": 64}}


_SEQ = {"name": "seq", "in": "path", "required": True, "description": "A message's seq",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_INT}}
_EMOJI = {"name": "emoji", "in": "path", "required": True,
          "description": "One emoji (a single RGI emoji sequence), percent-encoded",
          "schema": {"type": "string", "minLength": 1, "maxLength": MAX_EMOJI_CHARS}}
_ACTING_USER = {"name": "user", "in": "query", "required": False,
                "description": "Whose reaction it is (default: the credential's sub, or `api`)",
                "schema": {"type": "string", "minLength": 1, "maxLength": 64}}
_ACTING_NAME = {"name": "name", "in": "query", "required": False,
                "description": "The user's display name on the change (default: `user`)",
                "schema": {"type": "string", "minLength": 1, "maxLength": 64}}

_FILE_ID = {"name": "file_id", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{22}$"}}
_BYTES = {"description": "The bytes (or the range asked for)",
          "content": {"application/octet-stream": {"schema": {"type": "string",
                                                              "format": "binary"}}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _ref("Error")}}}


def _query(name: str, minimum: int, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "integer", "minimum": minimum, "maximum": MAX_INT}}


_SCHEMAS: dict[str, Any] = {
    "SearchResults": {"type": "object", "required": ["results", "before"], "properties": {
        "results": {"type": "array", "items": _ref("SearchResult")},
        "before": {"type": ["integer", "null"],
                   "description": "Give it as `before` for older results; null: no more"}}},
    "SearchResult": {
        "type": "object", "required": ["message", "fragments"], "properties": {
            "message": _ref("Message"),
            "fragments": {
                "type": "array", "description": "The message's text in pieces, cut "
                "around the hits (`hit: true`): plain data, never markup",
                "items": {"type": "object", "required": ["text", "hit"], "properties": {
                    "text": {"type": "string"}, "hit": {"type": "boolean"}}}}}},
    "SearchResultsAcrossRooms": {
        "type": "object", "required": ["results", "before"], "properties": {
            "results": {"type": "array", "description": "As `SearchResults`' results; each "
                        "message names its room (`message.room`). Newest first: by `ts`, "
                        "then room, then seq, all descending",
                        "items": _ref("SearchResult")},
            "before": {"type": ["string", "null"], "pattern": r"^\d+\.\d+\.[A-Za-z0-9_-]+$",
                       "description": "Give it as `before` for older results (the last "
                                      "result's place, `<ts>.<seq>.<room>`); null: no more"}}},
    "Error": {"type": "object", "required": ["error", "detail"], "properties": {
        "error": {"type": "string"}, "detail": {"type": "string"}}},
    "Message": {
        "type": "object", "description": "A message exactly as on the socket, in its current "
        "state (docs/protocol.md): a deleted one has empty text and `deleted: true` and "
        "nothing of what it said; an edited one `edited`; reactions in first-reaction order.",
        "required": ["type", "room", "seq", "id", "user", "name", "text", "ts"],
        "properties": {
            "type": {"const": "message"}, "room": {"type": "string"},
            "seq": {"type": "integer", "minimum": 1}, "id": {"type": ["string", "null"]},
            "user": {"type": "string"}, "name": {"type": "string"}, "text": {"type": "string"},
            "ts": {"type": "integer"}, "deleted": {"type": "boolean"},
            "reply_to": _ref("Reply"),
            "mentions": {"type": "array", "items": {"type": "string"}},
            "edited": {"type": "integer", "description": "`ts` of its last edit (ms)"},
            "reactions": {"type": "array", "items": _ref("Reaction")},
            "files": {"type": "array", "items": _ref("MessageFile"),
                      "description": "The files it carries (then `text` may be empty); "
                                     "metadata only: get their URLs with "
                                     "`POST /rooms/{room}/files/urls`"}}},
    "MessageFile": {
        "type": "object", "description": "A file a message carries (never a URL: they expire).",
        "required": ["id", "name", "size", "type"], "properties": {
            "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{22}$"},
            "name": {"type": "string", "minLength": 1, "maxLength": 255},
            "size": {"type": "integer", "minimum": 1},
            "type": {"type": "string"},
            "width": {"type": "integer", "description": "Images: pixels, upright"},
            "height": {"type": "integer"},
            "thumb": {"const": True, "description": "Images: a thumbnail exists"}}},
    "FileUrlsRequest": {"type": "object", "required": ["ids"], "properties": {
        "ids": {"type": "array", "items": {"type": "string"},
                "description": "File ids (at most ROOMCHAT_MAX_FILE_URLS)"}}},
    "FileUrls": {"type": "object", "required": ["files"], "properties": {
        "files": {"type": "object", "description": "File id -> its signed URLs; ids of no "
                  "file of the room are left out",
                  "additionalProperties": {
                      "type": "object", "required": ["url", "expires"], "properties": {
                          "url": {"type": "string"}, "thumb_url": {"type": "string"},
                          "expires": {"type": "integer", "description": "Unix seconds"}}}}}},
    "Reply": {
        "type": "object", "description": "The message answered, as it was when the reply was "
        "stored (`excerpt` is `\"\"` once that message is deleted or erased).",
        "required": ["seq", "user", "name", "excerpt"], "properties": {
            "seq": {"type": "integer", "minimum": 1}, "user": {"type": "string"},
            "name": {"type": "string"}, "excerpt": {"type": "string"}}},
    "Reaction": {"type": "object", "required": ["emoji", "users"], "properties": {
        "emoji": {"type": "string"},
        "users": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                  "description": "Who put it, in the order they did"}}},
    "Publish": {"type": "object", "properties": {
        "text": {"type": "string", "description": "Required, not empty, unless `files` "
                                                  "names at least one file"},
        "files": {"type": "array", "maxItems": MAX_FILES_PER_MESSAGE,
                  "items": {"type": "string", "pattern": "^[A-Za-z0-9_-]{22}$"},
                  "description": "Ids of uploads of `user` to this room, not yet attached to "
                                 "a message (at most ROOMCHAT_MAX_FILES_PER_MESSAGE: 400 "
                                 "`too_many_files`; 404 `file_not_found`; 409 "
                                 "`file_not_attachable`: another room's, attached already, "
                                 "or uploaded too long ago)"},
        "id": {"type": "string", "minLength": 1, "maxLength": 64,
               "description": "Client id: a retry with the same (user, id) is not stored twice"},
        "user": {"type": "string", "minLength": 1, "maxLength": 64,
                 "description": "Author's user id (default: the token's sub, or `api`)"},
        "name": {"type": "string", "minLength": 1, "maxLength": 64},
        "reply_to": {"type": "integer", "minimum": 1, "maximum": MAX_SEQ,
                     "description": "The seq of the message it answers: stored and not "
                                    "deleted (404 `not_found`, 409 `already_deleted`)"},
        "mentions": {"type": "array", "maxItems": MAX_MENTIONS,
                     "items": {"type": "string", "minLength": 1, "maxLength": 64},
                     "description": "User ids it mentions (at most ROOMCHAT_MAX_MENTIONS; "
                                    "duplicates are dropped)"}}},
    "Edit": {"type": "object", "required": ["text"], "properties": {
        "text": {"type": "string", "minLength": 1, "description": "The new text"},
        "id": {"type": "string", "minLength": 1, "maxLength": 64,
               "description": "Client id: a retry with the same (user, id) is not stored twice"},
        "user": {"type": "string", "minLength": 1, "maxLength": 64,
                 "description": "Who edits, who must be the author (default: the token's sub, "
                                "or `api`)"},
        "name": {"type": "string", "minLength": 1, "maxLength": 64}}},
    "Edited": {"type": "object", "required": ["room", "seq", "change", "duplicate"],
               "properties": {
                   "room": {"type": "string"}, "seq": {"type": "integer"},
                   "change": {"type": "integer", "description": "The edit entry's seq"},
                   "duplicate": {"type": "boolean"}}},
    "Reacted": {"type": "object", "required": ["room", "seq", "emoji", "on", "change", "noop"],
                "properties": {
                    "room": {"type": "string"}, "seq": {"type": "integer"},
                    "emoji": {"type": "string"}, "on": {"type": "boolean"},
                    "change": {"type": "integer", "description": "The reaction entry's seq, or "
                               "with `noop` the seq of the message's last change"},
                    "noop": {"type": "boolean", "description": "It already was so: nothing "
                             "was stored"}}},
    "ReadRequest": {"type": "object", "required": ["seq"], "properties": {
        "seq": {"type": "integer", "minimum": 1, "maximum": MAX_SEQ}}},
    "ReadMarker": {"type": "object", "required": ["room", "user", "read"], "properties": {
        "room": {"type": "string"}, "user": {"type": "string"},
        "read": {"type": "integer", "minimum": 0, "description": "The marker now"}}},
    "Unread": {"type": "object", "required": ["user", "rooms"], "properties": {
        "user": {"type": "string"},
        "rooms": {"type": "array", "items": {
            "type": "object", "required": ["room", "read", "unread", "mentions"],
            "properties": {
                "room": {"type": "string"},
                "read": {"type": "integer", "minimum": 0},
                "unread": {"type": "integer", "minimum": 0,
                           "description": "Messages after `read`, not the user's, not deleted"},
                "mentions": {"type": "integer", "minimum": 0,
                             "description": "Those of them that mention the user"},
                "unread_capped": {"const": True, "description": "Counting stopped at "
                                  "ROOMCHAT_UNREAD_SCAN messages: there may be more"}}}}}},
    "Published": {"type": "object", "required": ["seq", "duplicate"], "properties": {
        "seq": {"type": "integer", "minimum": 1}, "duplicate": {"type": "boolean"}}},
    "Messages": {"type": "object", "required": ["messages"], "properties": {
        "messages": {"type": "array", "items": _ref("Message")}}},
    "Member": {"type": "object", "required": ["user", "name"], "properties": {
        "user": {"type": "string"}, "name": {"type": "string"}}},
    "Presence": {"type": "object", "required": ["room", "members"], "properties": {
        "room": {"type": "string"}, "members": {"type": "array", "items": _ref("Member")}}},
    "Rooms": {"type": "object", "required": ["rooms"], "properties": {"rooms": {
        "type": "array", "items": {"type": "object", "required": [
            "room", "members", "connections", "seq"], "properties": {
            "room": {"type": "string"}, "members": {"type": "integer"},
            "connections": {"type": "integer"}, "seq": {"type": "integer"}}}}}},
    "Disconnected": {"type": "object", "required": ["user", "revoked_at"], "properties": {
        "user": {"type": "string"}, "revoked_at": {"type": "number"}}},
    "Erased": {"type": "object", "required": ["user", "erased", "rooms", "files"], "properties": {
        "user": {"type": "string"},
        "erased": {"type": "integer", "minimum": 0,
                   "description": "Messages this call made tombstones (0 when none was left)"},
        "files": {"type": "integer", "minimum": 0,
                  "description": "Files of the user this call deleted, every room"},
        "rooms": {"type": "object", "description": "Room -> the seqs erased there, ascending",
                  "additionalProperties": {"type": "array", "items": {
                      "type": "integer", "minimum": 1}}}}},
    "Deleted": {"type": "object", "required": ["room", "seq", "deleted", "change"],
                "properties": {
                    "room": {"type": "string"}, "seq": {"type": "integer"},
                    "deleted": {"const": True},
                    "change": {"type": ["integer", "null"], "description": "The delete "
                               "entry's seq; null when it was deleted already"}}},
    "BanRequest": {"type": "object", "required": ["user"], "properties": {
        "user": {"type": "string", "minLength": 1, "maxLength": 64},
        "until": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_BAN_UNTIL,
                  "description": "Unix seconds when it ends, in the future (default: until "
                                 "lifted)"},
        "reason": {"type": "string", "maxLength": 200}}},
    "Ban": {"type": "object", "required": ["room", "user", "until", "reason"], "properties": {
        "room": {"type": "string"}, "user": {"type": "string"},
        "until": {"type": ["number", "null"]}, "reason": {"type": "string"}}},
    "File": {
        "type": "object", "description": "An uploaded file (docs/api.md, \"Files\").",
        "required": ["id", "name", "size", "type", "url", "expires"], "properties": {
            "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{22}$"},
            "name": {"type": "string", "minLength": 1, "maxLength": 255},
            "size": {"type": "integer", "minimum": 1,
                     "description": "Bytes stored (an image's re-encoded size)"},
            "type": {"type": "string", "description": "MIME type sniffed from the bytes"},
            "width": {"type": "integer", "description": "Images: pixels, upright"},
            "height": {"type": "integer"},
            "thumb": {"const": True, "description": "Images: a WebP thumbnail exists"},
            "url": {"type": "string", "description": "Signed path of the file, valid until "
                                                     "`expires`, for anyone who holds it"},
            "thumb_url": {"type": "string"},
            "expires": {"type": "integer", "description": "Unix seconds"}}},
    "Unbanned": {"type": "object", "required": ["room", "user", "banned"], "properties": {
        "room": {"type": "string"}, "user": {"type": "string"}, "banned": {"const": False}}},
}


def document() -> dict[str, Any]:
    """The whole document (a fresh dict each call)."""
    room_messages = {
        "post": {"operationId": "publish", "summary": "Publish a message into a room",
                 "description": "Same seq, dedup by (user, id) and durability as a socket "
                 "message; answers once stored. Members get it live, in seq order.",
                 "parameters": [_ROOM],
                 "requestBody": {"required": True, "content": {
                     "application/json": {"schema": _ref("Publish")}}},
                 "responses": {"200": _ok("Published", "Stored (or a duplicate's original)"),
                               **_refusals("400", "404", "409", "503")}},
        "get": {"operationId": "history", "summary": "A page of stored messages, oldest first",
                "parameters": [_ROOM,
                               _query("after", 0, "Only messages with a higher seq (default 0)"),
                               _query("before", 1, "Only messages with a lower seq; alone: "
                                      "the newest `limit` before it"),
                               _query("limit", 1, "At most this many (default 50, cap 1000)")],
                "responses": {"200": _ok("Messages", "The page"),
                              **_refusals("400", "404", "503")}},
    }
    paths: dict[str, Any] = {
        "/rooms/{room}/messages": room_messages,
        "/rooms/{room}/search": {"get": {
            "operationId": "search", "summary": "Search a room's messages, newest first",
            "description": "Messages holding every word and \"quoted phrase\" of `q` (case "
                           "and Latin accents ignored; `word*`: words it begins, from 3 "
                           "characters), each in its current state (an edit's old words, "
                           "deleted and erased messages are never found), with the pieces "
                           "of its text that matched. Nothing of `q` is query syntax. The "
                           "embedded engine (SQLite) and the PostgreSQL log search; on Redis: "
                           "501.",
            "parameters": [
                _ROOM,
                {"name": "q", "in": "query", "required": True,
                 "description": "The words (at most ROOMCHAT_SEARCH_QUERY_MAX_CHARS "
                                "characters: longer is 400 `query_too_long`)",
                 "schema": {"type": "string", "minLength": 1}},
                _query("before", 1, "Only messages with a lower seq: the previous page's "
                       "`before`"),
                _query("limit", 1, "At most this many (default 20, capped to "
                       "ROOMCHAT_SEARCH_PAGE_LIMIT)")],
            "responses": {"200": _ok("SearchResults", "A page of results"),
                          "501": _error("The engine keeps no search index "
                                        "(`search_unsupported`: Redis, or "
                                        "ROOMCHAT_SEARCH_INDEX off)"),
                          **_refusals("400", "404", "503")}}},
        "/search": {"get": {
            "operationId": "searchAllRooms",
            "summary": "Search every room's messages, newest first",
            "description": "As `search`, over every room at once, for an all-rooms service "
                           "credential only (the API key, or a token whose `rooms` is "
                           "`[\"*\"]`; one limited to some rooms: 403 `room_forbidden`). "
                           "Results are ordered by time across rooms and paged by a cursor "
                           "of (ts, seq, room): every hit once, whatever is stored "
                           "meanwhile. Every match is read to order them: a query matching "
                           "more than ROOMCHAT_SEARCH_ALL_MAX_MATCHES messages in all is "
                           "400 `query_too_broad` (add words, or search one room).",
            "parameters": [
                {"name": "q", "in": "query", "required": True,
                 "description": "The words (at most ROOMCHAT_SEARCH_QUERY_MAX_CHARS "
                                "characters: longer is 400 `query_too_long`)",
                 "schema": {"type": "string", "minLength": 1}},
                {"name": "before", "in": "query", "required": False,
                 "description": "The previous page's `before` (`<ts>.<seq>.<room>`)",
                 "schema": {"type": "string", "pattern": r"^\d+\.\d+\.[A-Za-z0-9_-]+$"}},
                _query("limit", 1, "At most this many (default 20, capped to "
                       "ROOMCHAT_SEARCH_PAGE_LIMIT)")],
            "responses": {"200": _ok("SearchResultsAcrossRooms", "A page of results"),
                          "501": _error("The engine keeps no search index "
                                        "(`search_unsupported`: Redis, memory://, or "
                                        "ROOMCHAT_SEARCH_INDEX off)"),
                          **_refusals("400", "503")}}},
        "/rooms/{room}/messages/{seq}": {
            "patch": {
                "operationId": "editMessage", "summary": "Edit a message, as its author",
                "description": "Acts for `user`, who must be the message's author, within "
                               "ROOMCHAT_EDIT_WINDOW of its `ts` (0: forever). The edit is an "
                               "entry of the room's log: members get a `change` object "
                               "(`action: edit`), history reads the new text with `edited`.",
                "parameters": [_ROOM, _SEQ],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref("Edit")}}},
                "responses": {"200": _ok("Edited", "Stored (or a duplicate's original)"),
                              **_refusals("400", "404", "409", "503")}},
            "delete": {
                "operationId": "deleteMessage", "summary": "Replace a message by its tombstone",
                "description": "A delete entry in the room's log: members get a `change` "
                               "object (`action: delete`), history and resume the tombstone. "
                               "Without `user` the credential moderates the room (any message, "
                               "`by: moderator`); with it, it acts for that user, who must be "
                               "the author (`by: author`). Idempotent: a tombstone answers "
                               "the same with `change: null`.",
                "parameters": [_ROOM, _SEQ,
                               {**_ACTING_USER, "description": "Delete as this user, its "
                                "author (default: as a moderator)"}, _ACTING_NAME],
                "responses": {"200": _ok("Deleted", "Deleted"),
                              **_refusals("400", "404", "503")}}},
        "/rooms/{room}/messages/{seq}/reactions/{emoji}": {
            "put": {
                "operationId": "react", "summary": "Put a user's reaction on a message",
                "description": "An entry of the room's log (`change`, `action: react`, "
                               "`on: true`); putting it again stores nothing (`noop`).",
                "parameters": [_ROOM, _SEQ, _EMOJI, _ACTING_USER, _ACTING_NAME],
                "responses": {"200": _ok("Reacted", "Stored, or already so"),
                              **_refusals("400", "404", "409", "503")}},
            "delete": {
                "operationId": "unreact", "summary": "Take back a user's reaction",
                "description": "An entry of the room's log (`change`, `action: react`, "
                               "`on: false`); taking back one that is not there stores "
                               "nothing (`noop`).",
                "parameters": [_ROOM, _SEQ, _EMOJI, _ACTING_USER, _ACTING_NAME],
                "responses": {"200": _ok("Reacted", "Stored, or already so"),
                              **_refusals("400", "404", "409", "503")}}},
        "/rooms/{room}/read/{user}": {"put": {
            "operationId": "markRead", "summary": "Move a user's read marker forward",
            "description": "As the user's `read` frame: never back, stops at the room's "
                           "newest entry; their sockets in the room get `{\"type\":\"read\"}`.",
            "parameters": [_ROOM, _USER],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("ReadRequest")}}},
            "responses": {"200": _ok("ReadMarker", "The marker now"),
                          **_refusals("400", "404", "503")}}},
        "/rooms/{room}/presence": {"get": {
            "operationId": "presence", "summary": "Who is in a room", "parameters": [_ROOM],
            "responses": {"200": _ok("Presence", "Members"), **_refusals("404", "503")}}},
        "/rooms": {"get": {
            "operationId": "rooms", "summary": "Rooms live in this process",
            "responses": {"200": _ok("Rooms", "Live rooms, most connections first"),
                          **_refusals()}}},
        "/rooms/{room}/bans": {"post": {
            "operationId": "ban", "summary": "Ban a user from a room",
            "description": "Their sockets in the room close with 4004; joins get 403 `banned`.",
            "parameters": [_ROOM], "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("BanRequest")}}},
            "responses": {"200": _ok("Ban", "Banned"), **_refusals("400", "404", "503")}}},
        "/rooms/{room}/bans/{user}": {
            "get": {"operationId": "getBan", "summary": "A user's ban, if in force",
                    "parameters": [_ROOM, _USER],
                    "responses": {"200": _ok("Ban", "In force"),
                                  **_refusals("400", "404", "503")}},
            "delete": {"operationId": "unban", "summary": "Lift a ban",
                       "parameters": [_ROOM, _USER],
                       "responses": {"200": _ok("Unbanned", "Lifted"),
                                     **_refusals("400", "404", "503")}}},
        "/rooms/{room}/files": {"post": {
            "operationId": "upload", "summary": "Upload a file into a room",
            "description": "The raw bytes as the body (no multipart), at most "
                           "ROOMCHAT_MAX_FILE_BYTES. The type is sniffed from the bytes; "
                           "JPEG, PNG, WebP and GIF are re-encoded (metadata stripped, "
                           "orientation applied) with a thumbnail; anything else is kept as "
                           "sent and served as a download. Not attached to a message, it is "
                           "deleted after ROOMCHAT_FILE_ORPHAN_TTL.",
            "parameters": [_ROOM,
                           {"name": "name", "in": "query", "required": False,
                            "description": "The file's name (a label: only what follows the "
                                           "last / or \\ is kept; default `file`)",
                            "schema": {"type": "string", "maxLength": 255}},
                           {"name": "user", "in": "query", "required": False,
                            "description": "Whose file it is (quota, erasure); default the "
                                           "credential's sub, or `api`",
                            "schema": {"type": "string", "minLength": 1, "maxLength": 64}}],
            "requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string",
                                                        "format": "binary"}}}},
            "responses": {"201": _ok("File", "Stored"),
                          "408": _error("Nothing sent for ROOMCHAT_UPLOAD_IDLE_TIMEOUT "
                                        "(`upload_stalled`)"),
                          "413": _error("Larger than ROOMCHAT_MAX_FILE_BYTES "
                                        "(`file_too_large`), past the user's quota "
                                        "(`quota_exceeded`) or an image of too many pixels "
                                        "(`image_too_large`)"),
                          "422": _error("An image that does not decode (`bad_image`)"),
                          **_refusals("400", "404", "503")}}},
        "/rooms/{room}/files/urls": {"post": {
            "operationId": "fileUrls", "summary": "Signed URLs of files of a room",
            "description": "For files a message carries (an `<img>` cannot send a bearer "
                           "header): each URL is valid until `expires`, for anyone who holds "
                           "it. Pages use `POST /rooms/{room}/files/urls` with a member's "
                           "token; same body and answer.",
            "parameters": [_ROOM],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("FileUrlsRequest")}}},
            "responses": {"200": _ok("FileUrls", "The URLs"),
                          **_refusals("400", "404", "503")}}},
        "/rooms/{room}/files/{file_id}": {"get": {
            "operationId": "download", "summary": "A file's bytes",
            "description": "Images inline as their type, anything else as "
                           "application/octet-stream with Content-Disposition: attachment. "
                           "ETag, If-None-Match (304) and one Range (206) are supported.",
            "parameters": [_ROOM, _FILE_ID],
            "responses": {"200": _BYTES, "206": _BYTES, **_refusals("404", "503")}}},
        "/rooms/{room}/files/{file_id}/thumb": {"get": {
            "operationId": "downloadThumb", "summary": "An image's thumbnail (WebP)",
            "parameters": [_ROOM, _FILE_ID],
            "responses": {"200": _BYTES, "206": _BYTES, **_refusals("404", "503")}}},
        "/users/{user}/disconnect": {"post": {
            "operationId": "disconnect", "summary": "Close all of a user's sockets everywhere",
            "description": "A revocation: sockets close with 4003 on every process and the "
                           "user's tokens issued before now are refused.",
            "parameters": [_USER],
            "responses": {"200": _ok("Disconnected", "Revoked"), **_refusals("400", "503")}}},
        "/users/{user}/unread": {"get": {
            "operationId": "unread", "summary": "A user's read markers and unread counts",
            "description": "Every room the user has a read marker in (and the credential may "
                           "act on), by name: the marker, the messages after it that are not "
                           "theirs and not deleted, and those that mention them, counted over "
                           "the room's last ROOMCHAT_UNREAD_SCAN messages. For an app's badge.",
            "parameters": [_USER],
            "responses": {"200": _ok("Unread", "Per room"), **_refusals("400", "503")}}},
        "/users/{user}/erase": {"post": {
            "operationId": "erase", "summary": "Erase every message of a user (erasure request)",
            "description": "Every stored message of the user, in every room, becomes a "
                           "tombstone through a delete entry of its room's log (members online "
                           "get a `change` object for each, on every process); the texts of "
                           "their edits, their reactions and the excerpts of their messages "
                           "quoted in replies leave storage; every file they uploaded is "
                           "deleted. Idempotent. Needs an all-rooms credential.",
            "parameters": [_USER],
            "responses": {"200": _ok("Erased", "Erased"), **_refusals("400", "503")}}},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document", "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1",
                                  "content": {"application/json": {"schema": {
                                      "type": "object"}}}}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "roomchat server API", "version": "1",
                 "description": "See docs/api.md."},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "A JWT with \"scope\": \"api\" (`roomchat token --api`) or "
                               "ROOMCHAT_API_KEY"}}},
    }
