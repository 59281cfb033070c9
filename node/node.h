/* stratadb-server internals: the node (one libuv loop owning all state), its listener,
 * client connections, sessions, authentication and forwarding to the leader. */
#ifndef STRATA_NODE_H
#define STRATA_NODE_H

#include "common.h"
#include "placement.h"
#include "proto.h"
#include "replication.h"
#include "storage.h"

#include <stdbool.h>
#include <uv.h>

#define NODE_MAX_MEMBERS 16

struct node_config {
    const char *data_dir;
    char listen_host[64];
    int listen_port;
    char advertise[REPL_ADDRESS_MAX + 1]; /* host:port peers and clients reach us at */
    uint64_t node_id;                     /* 0 = derive from the bootstrap list */
    struct repl_member members[NODE_MAX_MEMBERS]; /* --bootstrap list */
    size_t nmembers;
    char join[512]; /* --join list, comma-separated */
    const char *api_keys_file;
    size_t max_frame;
    unsigned idle_timeout_ms; /* session idle timeout (closes the connection) */
    uint32_t shards;          /* --shards: shard groups of a new cluster (default 3) */
    uint32_t rf;              /* --replication-factor of a new cluster (default 3) */
    char http[REPL_ADDRESS_MAX + 1]; /* --http HOST:PORT for /metrics etc., "" = none */
    bool auto_move_branches;  /* --auto-move-branches: the rebalancer moves branches */
    struct repl_options repl; /* template for every group (group_id, data_dir set per group) */
};

/* ---- Authentication (auth.c) ------------------------------------------------------
 * A file of API keys, one per line: `KEY MODE PATTERN[,PATTERN...] [NAME]`, MODE `r`,
 * `rw` or `admin`, patterns are branch-name globs (fnmatch). '#' starts a comment. It
 * seeds the replicated access table (below) when a cluster is created; its first key is
 * the node's own credential for node-to-node requests. No file = open mode.
 *
 * struct auth_key is also a connection's credential (conn.cred), which the router and
 * admin.c carry: `key` is the secret the client presented (kept only to forward its
 * commands, the receiving node checks it again); write/patterns read as rw on '*', so
 * admin.c's own check passes — conn.c has already decided (authz_request). */
struct auth_key {
    char *key;
    bool write;
    bool admin; /* file mode `admin` */
    char *name; /* file: the optional NAME column, else NULL */
    char **patterns;
    size_t npatterns;
};
struct auth {
    struct auth_key *keys;
    size_t nkeys;
};
int auth_load(const char *path, struct auth *a, struct err *err);
struct node;
/* The key this node presents to the others (NULL in open mode). */
const struct auth_key *node_self_key(const struct node *n);
/* Its secret, as a forward link presents it (NULL in open mode). */
const char *node_self_secret(const struct node *n);
void auth_free(struct auth *a);
/* The key for an API key string, or NULL. */
const struct auth_key *auth_find(const struct auth *a, const char *key, size_t len);

/* The access table (auth.c: pure code; authz.c: the node's cache and commands). API keys
 * by SHA-256 digest (never the secret), each with a name and grants: a permission on
 * branch-name patterns. read < write < admin; admin on the literal pattern '*' also
 * allows cluster.* and auth.* commands. Stored in the meta group as the state cell
 * `auth`; its counter is the table version. Format and rules: docs/auth.md. */
#define AUTHZ_DIGEST_LEN 32
#define AUTHZ_NAME_MAX 64
#define AUTHZ_PATTERN_MAX 255
#define AUTHZ_MAX_KEYS 4096
#define AUTHZ_MAX_PATTERNS 64
#define AUTHZ_FORMAT_VERSION 1
enum authz_perm { AUTHZ_NONE = 0, AUTHZ_READ, AUTHZ_WRITE, AUTHZ_ADMIN };
struct authz_grant {
    enum authz_perm perm;
    char **patterns; /* owned, deduplicated, in the order granted */
    size_t npatterns;
};
struct authz_entry {
    char *name;
    uint8_t digest[AUTHZ_DIGEST_LEN];
    bool node; /* the nodes' own key (first key of the seeding file): stays admin on '*' */
    struct authz_grant *grants; /* at most one per permission, ascending */
    size_t ngrants;
};
struct authz_table {
    uint64_t version; /* the cell's counter (0 for a table built from the key file) */
    struct authz_entry *keys; /* in the order added */
    size_t nkeys;
};
void authz_table_init(struct authz_table *t);
void authz_table_free(struct authz_table *t);
/* Deep copy into an initialized dst (freed first). 0 or OUT_OF_MEMORY (dst empty). */
int authz_table_copy(struct authz_table *dst, const struct authz_table *src);
/* Append the MessagePack form (the cell value, without the version) to out. */
int authz_table_encode(const struct authz_table *t, struct buf *out);
/* Decode and validate (exactly one value). On error t is left empty and err names the
 * field (PROTOCOL_ERROR, or OUT_OF_MEMORY). t->version is not touched by the bytes. */
int authz_table_decode(struct authz_table *t, const uint8_t *p, size_t len, struct err *err);
/* The table a key file seeds: names from the NAME column or key-N (line order), r =
 * read, rw = write, admin = admin; rw whose first pattern is '*' = admin (what rw on '*'
 * allowed before the table existed). The first key is marked as the nodes' key when it
 * has admin on '*'. */
int authz_table_from_file(struct authz_table *t, const struct auth *file, struct err *err);
void authz_digest(const char *key, size_t len, uint8_t out[AUTHZ_DIGEST_LEN]);
const struct authz_entry *authz_table_find(const struct authz_table *t,
                                           const uint8_t digest[AUTHZ_DIGEST_LEN]);
const struct authz_entry *authz_table_named(const struct authz_table *t, const char *name,
                                            size_t len);
/* The strongest permission `e` has on one branch. */
enum authz_perm authz_entry_right(const struct authz_entry *e, const char *branch, size_t len);
/* Admin on '*': cluster.* and auth.* commands. */
bool authz_entry_cluster_admin(const struct authz_entry *e);
/* May `e` do `need` on every branch named (need ADMIN: cluster admin, names ignored;
 * NONE: anything authenticated)? 0 or PERMISSION_DENIED. */
int authz_entry_check(const struct authz_entry *e, enum authz_perm need,
                      const char *const *names, const size_t *lens, size_t n, struct err *err);
const char *authz_perm_name(enum authz_perm p);

/* A change of the table, decoded from an auth.add / grant / revoke / remove command. */
enum authz_op { AUTHZ_OP_ADD = 1, AUTHZ_OP_GRANT, AUTHZ_OP_REVOKE, AUTHZ_OP_REMOVE };
struct authz_change {
    enum authz_op op;
    char name[AUTHZ_NAME_MAX + 1];
    uint8_t digest[AUTHZ_DIGEST_LEN]; /* add: of the given key */
    bool generate;                    /* add without 'key': the meta leader makes one */
    /* add: every grant; grant: one; revoke: one, perm NONE = whichever permission holds
     * the patterns. */
    struct authz_grant *grants;
    size_t ngrants;
};
/* Validate and decode the arguments of `op` ("auth.add", ...). 0, INVALID_ARGUMENT (the
 * message names the argument) or OUT_OF_MEMORY; c is freed on error. */
int authz_change_parse(struct authz_change *c, const char *op, const msgpack_object *cmd,
                       struct err *err);
void authz_change_free(struct authz_change *c);
/* Apply a change: all or nothing (t unchanged on error). *changed is false when it was
 * already in effect (a repeated grant). Errors: NOT_FOUND (no such key or grant),
 * ALREADY_EXISTS (name or key taken), INVALID_ARGUMENT (would leave no admin on '*',
 * or take the nodes' key's admin, or too many keys), OUT_OF_MEMORY. */
int authz_table_apply(struct authz_table *t, const struct authz_change *c, bool *changed,
                      struct err *err);

/* The node's cache of the table (authz.c), embedded in struct node. */
struct authz_waiter;
struct authz_state {
    bool init;
    struct authz_table file; /* the --api-keys file as a table (digests only) */
    bool has_file;
    bool seedable;           /* the file has a key with admin on '*' */
    struct authz_table table; /* the replicated table, when `have` */
    bool have;
    bool absent;            /* a linearizable read found no table in the meta group */
    uint64_t current_ms;    /* when the cache was last known to be current */
    bool was_current;       /* for logging the changes */
    uint64_t read_applied;  /* meta applied index of the last local read */
    bool reading, fresh_wanted, seeding;
    uint64_t last_remote_ms;
    unsigned round;
    uint64_t fresh_started, fresh_done; /* linearizable reads: started, last succeeded */
    uint64_t fresh_failed;              /* linearizable reads that failed, ever */
    uint64_t inflight, inflight_ms;     /* the fresh read under way (seq) and its start */
    uint64_t last_ok_ms, last_fail_ms;  /* when fresh reads last succeeded / failed */
    struct authz_waiter *waiters;
};

/* ---- Connections (conn.c) --------------------------------------------------------------
 * Lifecycle of a client connection:
 *
 *   HELLO_WAIT --HELLO ok--> READY --ERROR sent / peer closed / idle--> CLOSING --> freed
 *        \--bad first frame------------------------------------------->/
 *
 * A connection is freed only when it is closed AND no request of it is still pending
 * in replication or forwarding (refs == 0). */
enum conn_state { CONN_HELLO_WAIT, CONN_READY, CONN_CLOSING };

struct node;

struct session {
    char branch[129];
    char space[65];
};

struct conn {
    struct node *node;
    uv_tcp_t *tcp;
    struct proto_reader rd;
    enum conn_state state;
    const struct auth_key *key; /* &cred when the client gave a key, else NULL */
    struct auth_key cred;       /* cred.key owned */
    uint8_t digest[AUTHZ_DIGEST_LEN];
    /* A frame held while a denial is confirmed (authz_confirm); later frames wait. */
    bool auth_waiting, auth_confirmed;
    uint8_t held_kind;
    struct buf held;
    struct session sess;
    unsigned refs; /* 1 for the open socket + 1 per pending request */
    uint64_t last_active_ms;
    struct conn *next, *prev;
};

void conn_start_client(struct node *n, uv_tcp_t *tcp, const char *first, size_t len);
void conn_close(struct conn *c);

/* ---- Forwarding (forward.c) --------------------------------------------------------
 * A follower relays requests to the leader over one pooled client connection per
 * leader address, with the FORWARDED flag, and relays the reply. */
typedef void (*fwd_done_cb)(void *arg, int code, const uint8_t *result, size_t len,
                            const char *message, const char *leader);
void fwd_request(struct node *n, const char *leader, const char *api_key, const uint8_t *cmd,
                 size_t len, uint32_t flags, fwd_done_cb cb, void *arg);
/* The same, carrying the shard the command is meant for (the receiver runs a forwarded
 * fan-out part on that shard instead of fanning out again). */
void fwd_request_routed(struct node *n, const char *leader, const char *api_key,
                        const uint8_t *cmd, size_t len, uint32_t flags,
                        const struct proto_route *route, fwd_done_cb cb, void *arg);
void fwd_close_all(struct node *n);
struct fwd_link;
struct sniff;
struct observe; /* metrics and the HTTP endpoints (observe.h) */

/* ---- Groups and placement (shards.c) ----------------------------------------------
 * A node hosts replicas of several Raft groups: group 0 (meta: the placement table) and
 * the shards the table gives it. Each has its own engine and raft directory DIR/raft-G.
 * docs/sharding.md. */
struct node_group {
    uint32_t id;
    struct node *node;
    struct storage *engine;
    struct repl_group *group; /* NULL once stopped */
};
struct pl_waiter;
struct assign_req;
struct rb_waiter;
struct rb_auto;

/* The hosted group `id`, or NULL. */
struct node_group *node_group(struct node *n, uint32_t id);
/* Open (and with `members` bootstrap) and start group `id` on this node. */
int node_group_start(struct node *n, uint32_t id, const struct repl_member *members, size_t nm,
                     struct err *err);
/* Groups present in the data dir (raft-G directories), ascending; returns how many. */
size_t node_groups_on_disk(struct node *n, uint32_t *ids, size_t cap);
/* Start the placement machinery (timer: cache refresh, meta duties, reconcile). */
void shards_start(struct node *n);
/* Stop every group (leadership handed away first), then call cb. */
void shards_stop(struct node *n, void (*cb)(struct node *n));
/* Call cb once the cached table has epoch >= `epoch` (0: any table), refreshing it from
 * the meta leader first when `fresh`. cb gets 0 or an error (UNAVAILABLE, TIMEOUT). */
void placement_wait(struct node *n, uint64_t epoch, bool fresh, void (*cb)(void *arg, int code),
                    void *arg);
/* cluster.assign on the meta leader: assign names (absent ones) to `shard` (0 = least
 * loaded); the result is {epoch, shards: [shard per name]}. */
void meta_assign(struct node *n, const char *const *names, const size_t *lens, size_t cnt,
                 uint32_t shard, bool unassign, fwd_done_cb cb, void *arg);
/* A general table change on the meta leader: `mutate` runs on a fresh copy of the table
 * (it may run several times if another writer interferes; it must be idempotent) and
 * the result is written with a CAS. cb gets {epoch, shards: []} or an error. */
void meta_change(struct node *n, int (*mutate)(struct placement *p, void *ctx, struct err *err),
                 void *ctx, fwd_done_cb cb, void *arg);
/* The leader address of group `id` as this node knows it ("" if unknown). */
const char *node_group_leader(struct node *n, uint32_t id);
/* Remember a leader address learned from a reply. */
void node_group_hint(struct node *n, uint32_t id, const char *leader, size_t len);

/* ---- The router (router.c) ------------------------------------------------------------ */
/* A REQUEST's optional routing expectation (client's [shard, epoch]). */
#define route_expect proto_route
/* Something only group `gid`'s leader may do (a meta or membership operation). */
typedef void (*node_local_fn)(struct node *n, const uint8_t *cmd, size_t len,
                              const struct auth_key *key, fwd_done_cb cb, void *arg);
/* Run `local` on this node if it leads group gid, else forward `cmd` to the leader (whose
 * connection handler maps the command back to the same function). */
void route_local(struct node *n, node_local_fn local, uint32_t gid, const uint8_t *cmd,
                 size_t len, uint32_t flags, const struct auth_key *key, fwd_done_cb cb, void *arg);
/* Run a command on group `gid`: locally if this node leads it (or a stale read on a local
 * replica), else forwarded to its leader. */
void route_to_group(struct node *n, uint32_t gid, const uint8_t *cmd, size_t len, uint32_t flags,
                    const struct auth_key *key, fwd_done_cb cb, void *arg);
/* cluster.placement {fresh?}: the table, its epoch and the shard leaders this node knows. */
void node_placement(struct node *n, bool fresh, fwd_done_cb cb, void *arg);
/* cluster.assign {names, shard?, unassign?}: run on the meta leader (forwarded there). */
void node_assign(struct node *n, const uint8_t *cmd, size_t len, uint32_t flags,
                 const struct auth_key *key, fwd_done_cb cb, void *arg);
/* The branches a command names (for routing and authorization): fills up to `cap` and
 * returns how many there are; a data command naming none names "default". */
size_t node_cmd_branches(const msgpack_object *cmd, const char *op, const char **names,
                         size_t *lens, size_t cap);

/* ---- The access table on this node (authz.c) ----------------------------------------
 * Decisions for conn.c. 0 = allowed; AUTHZ_AGAIN = not final: confirm it against a fresh
 * read (authz_confirm) and ask again with `confirmed` set; else an error code with err
 * filled (UNAUTHENTICATED, PERMISSION_DENIED, UNAVAILABLE when the cache is not current). */
#define AUTHZ_AGAIN (-1)
/* Does this node check keys at all (a table or a key file)? */
bool authz_on(struct node *n);
int authz_hello(struct node *n, const char *key, size_t len, bool confirmed, struct err *err);
/* `digest` NULL: the connection gave no key. need NONE: any known key; READ/WRITE: on
 * every name; ADMIN: admin on '*' (cluster.* and auth.*). */
int authz_request(struct node *n, const uint8_t *digest, enum authz_perm need,
                  const char *const *names, const size_t *lens, size_t cnt, bool confirmed,
                  struct err *err);
/* Call cb once a linearizable read of the table started after this call has succeeded,
 * or three have failed (retried at once after a NOT_LEADER naming the leader, else at the
 * next tick), or 2 s passed. cb may run before this returns. */
void authz_confirm(struct node *n, void (*cb)(void *arg), void *arg);
/* shards.c hooks: the 50 ms tick with the meta group's status, and shutdown. */
void authz_tick(struct node *n, bool member, const struct repl_status *st);
void authz_stop(struct node *n);
/* auth.list / add / grant / revoke / remove / sync: validated here, run on the meta
 * leader (forwarded there). The caller has checked admin rights. */
void authz_command(struct node *n, const char *op, const msgpack_object *cmd,
                   const uint8_t *bytes, size_t len, uint32_t flags, const struct auth_key *key,
                   fwd_done_cb cb, void *arg);
/* ---- Branch moves (move.c) ---------------------------------------------------------
 * The meta leader drives every move in the meta group's `moves` record. docs/sharding.md
 * "Branch moves". */
struct mover;
void move_service_start(struct node *n);
void move_service_stop(struct node *n);
/* cluster.move_branch / moves / move_abort / move_exec: returns 1 when `op` is one of
 * them (cb is then called), 0 otherwise. */
int node_move_admin(struct node *n, const char *op, const msgpack_object *cmd,
                    const uint8_t *bytes, size_t len, uint32_t flags, const struct auth_key *key,
                    fwd_done_cb cb, void *arg);
/* Start moving `branch` to shard `to_shard` (chunk 0: default), as cluster.move_branch
 * does (on the meta leader, forwarded there if needed). cb gets the move's record
 * {id, branch, from, to, phase, chunk_bytes} once it is recorded, or the refusal
 * (BRANCH_NOT_FOUND, INVALID_ARGUMENT: default / same shard / forks, ALREADY_EXISTS:
 * moving already, UNAVAILABLE); `standalone` also refuses a fork (INVALID_ARGUMENT). The
 * rebalancer's entry point. */
void move_branch_start(struct node *n, const char *branch, uint32_t to_shard, uint32_t chunk,
                       bool standalone, fwd_done_cb cb, void *arg);

/* ---- The node (server.c) ---------------------------------------------------------- */
struct node {
    uv_loop_t *loop;
    struct node_config cfg;
    struct node_group *groups[PL_MAX_SHARDS + 1]; /* by group id; NULL = not hosted */
    unsigned groups_stopping;
    void (*groups_stopped_cb)(struct node *n);
    /* Placement cache (shards.c). */
    struct placement pl;
    bool have_pl;
    uint64_t pl_applied;   /* meta applied index the cache was read at */
    bool pl_reading;       /* a refresh is in flight */
    bool pl_fresh_wanted;  /* a waiter wants a linearizable refresh */
    uint64_t pl_last_remote_ms;
    bool pl_initing;       /* this meta leader is writing the initial table */
    bool pl_absent;        /* the meta group answered: no table written yet */
    uint64_t pl_fresh_started, pl_fresh_ok; /* linearizable refreshes: started, last ok */
    struct pl_waiter *pl_waiters;
    struct assign_req *assign_q;
    bool assign_busy;
    char hints[PL_MAX_SHARDS + 1][REPL_ADDRESS_MAX + 1]; /* leader hints per group */
    uint64_t transfer_at[PL_MAX_SHARDS + 1];             /* leader spreading cool-down */
    uint64_t last_spread_ms;
    /* Rebalancer (rebalance.c). */
    uint64_t rb_last_step_ms, rb_steps, rb_stale_since, rb_retry_at;
    uint32_t rb_next;
    uint64_t rb_ok_epoch[PL_MAX_SHARDS + 1];     /* shard epoch its members matched */
    uint64_t rb_checked_ms[PL_MAX_SHARDS + 1];
    uint64_t rb_unassigned_ms[PL_MAX_SHARDS + 1]; /* since when the table drops a replica */
    struct rb_waiter *rb_waiters;
    /* The rebalancer's private state: the current action and the automatic branch moves
     * (allocated by the first action, freed at stop). */
    struct rb_auto *rb_auto;
    bool retiring[PL_MAX_SHARDS + 1]; /* a retired group is still closing */
    uv_timer_t shard_timer;
    bool shard_timer_on;
    struct auth auth;
    bool open_mode;
    struct authz_state authz; /* the access table cache (authz.c) */
    char cluster_id[64];
    uv_tcp_t listener;
    uv_signal_t sigterm, sigint;
    uv_timer_t idle_timer;
    struct conn *conns;
    struct sniff *sniffs; /* accepted, kind not known yet */
    struct fwd_link *links;
    uint64_t forwarded; /* requests relayed to the leader (metric) */
    struct observe *obs; /* NULL without --http */
    struct backup_state *backup; /* backup files and restore staging (backup.c) */
    struct mover *mover; /* branch moves (move.c); NULL when stopped */
    bool stopping;
    int exit_code;
    /* A fresh data dir given --bootstrap waits for the other initial members before it
     * bootstraps (server.c, "Safe bootstrap"); until then group is NULL. */
    bool fresh;
    uv_timer_t probe_timer;
    bool probing;
    unsigned probe_round, probe_answered, probe_formed;
    char probe_formed_by[REPL_ADDRESS_MAX + 1];
    uint64_t probe_formed_index;
};

/* ---- Backup and restore (backup.c) ------------------------------------------------------
 * cluster.backup* / cluster.restore*: docs/operations.md "Backup and restore". */
/* Set up (before any group opens: it installs the groups' node-command hook). */
int backup_init(struct node *n, struct err *err);
/* Release everything (after every group stopped). */
void backup_free(struct node *n);
/* Is `op` a backup or restore command? Then backup_command runs it (as node_admin). */
bool backup_owns(const char *op);
int backup_command(struct node *n, const char *op, const msgpack_object *cmd, const uint8_t *bytes,
                   size_t len, uint32_t flags, const struct auth_key *key, fwd_done_cb cb,
                   void *arg);

int node_start(struct node *n, struct err *err);
/* The meta group's status, or an "unavailable" one while the node has no meta group. */
void node_status(struct node *n, struct repl_status *st);
/* Group `gid`'s status (unavailable when not hosted). */
void node_group_status(struct node *n, uint32_t gid, struct repl_status *st);
void node_stop(struct node *n);
/* Run a command for a connection or a forwarded request: the router (router.c). */
void node_submit(struct node *n, const uint8_t *cmd, size_t len, uint32_t flags,
                 const struct route_expect *expect, const struct auth_key *key, fwd_done_cb cb,
                 void *arg);
/* cluster.add_member / remove_member / transfer_leader. */
int node_admin(struct node *n, const char *op, const msgpack_object *cmd, const uint8_t *bytes,
               size_t len, uint32_t flags, const struct auth_key *key, fwd_done_cb cb,
               void *arg);
/* Membership steps the rebalancer drives (admin.c), each run on the group's leader:
 * add (joins as non-voter, promoted when caught up) or remove a member; list members;
 * hand leadership to `to`. */
void admin_group_member(struct node *n, uint32_t gid, bool add, uint64_t id, const char *address,
                        const struct auth_key *key, fwd_done_cb cb, void *arg);
#define ADMIN_MAX_MEMBERS 16
struct admin_members {
    uint64_t leader;
    size_t n;
    uint64_t ids[ADMIN_MAX_MEMBERS];
    bool voter[ADMIN_MAX_MEMBERS];
};
void admin_group_members(struct node *n, uint32_t gid, const struct auth_key *key, fwd_done_cb cb,
                         void *arg);
int admin_members_decode(const uint8_t *data, size_t len, struct admin_members *m);
void admin_transfer(struct node *n, uint32_t gid, uint64_t to, const struct auth_key *key,
                    fwd_done_cb cb, void *arg);

/* ---- The rebalancer (rebalance.c) -------------------------------------------------------
 * On the meta leader: group memberships follow the table; the table moves one step at a
 * time towards an even layout; once it is settled, standalone branches move from the
 * shard with the most branches to the one with the fewest (one move at a time, unless
 * --auto-move-branches off). On every node: replicas the table dropped are retired. */
void rebalance_tick(struct node *n, uint64_t now);
void rebalance_stop(struct node *n);
/* Answer cb once node `id` has left the table (TIMEOUT after timeout_ms). */
void rebalance_wait_removed(struct node *n, uint64_t id, uint64_t timeout_ms, fwd_done_cb cb,
                            void *arg);
/* Stop hosting shard `id` (its data directory is kept as raft-ID.retired). */
void node_group_retire(struct node *n, uint32_t id);

/* Adopt (and persist in DIR/node) the cluster id learned when joining. */
void node_set_cluster_id(struct node *n, const char *id, size_t len);
/* libuv read buffer allocator (the read callback frees b->base). */
void node_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b);
/* Queue `data` on a stream (ownership of its bytes passes here; data is left empty).
 * Returns 0, or a libuv error after which the caller closes the stream. */
int stream_write(uv_stream_t *s, struct buf *data);
/* MessagePack helpers (mp.c): a msgpack-c writer into a struct buf, a C-string packer,
 * a string-key lookup in a map (NULL when absent or not a map) and an unsigned integer
 * member (false when absent or not one). */
int node_buf_w(void *d, const char *p, size_t n);
void node_pack_str(msgpack_packer *pk, const char *s);
const msgpack_object *node_map_get(const msgpack_object *m, const char *key);
bool node_map_u64(const msgpack_object *m, const char *key, uint64_t *v);
/* Parse "host:port". */
int parse_hostport(const char *s, char *host, size_t hostcap, int *port);

#endif
