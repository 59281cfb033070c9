/* Holds back an InstallSnapshot that arrives while the node writes its own snapshot.
 *
 * Why: libraft 0.22.1 (src/legacy.c, takeSnapshotCb) parks such an install as "pending"
 * and, when its own snapshot is written, clears the pending pointer *before* passing it
 * on, so the follower dereferences NULL and dies (SIGSEGV). Our fault tests hit it when
 * a lagging follower, healing from a partition or a pause, starts a snapshot of the
 * entries it just applied while the leader sends it a snapshot (docs/reliability.md).
 *
 * How: raft's receive callback is wrapped (io->start is the one place raft hands it to
 * the I/O). An InstallSnapshot that arrives while raft.legacy.snapshot_taking is set is
 * kept here, with its own copy of the sender's address (the connection that owns the
 * original may close meanwhile), and handed to raft by the pump once the own snapshot
 * is written — raft then never sees the overlap its legacy layer mishandles. Delaying a
 * message is something the network may do anyway, so raft's logic is not affected; if
 * the leader sends another snapshot meanwhile, only the newest is kept (the older one
 * is superseded).
 *
 * Second trap, a leak: an InstallSnapshot that arrives while raft is still installing
 * an earlier one (raft.snapshot.installing) is ignored by replicationInstallSnapshot,
 * which reports it "async" so recvInstallSnapshot returns without freeing its payload
 * (the snapshot data and configuration; LeakSanitizer shows it at exit). raft reads
 * nothing of the payload on that path — only the term and the sender, to keep the leader
 * and the election timer current — so the guard frees the payload itself and hands raft
 * the message without it. Thread: the loop thread. */
#include "group.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

#define io_group(io) ((struct repl_group *)((char *)(io)-offsetof(struct repl_group, io)))

static void drop_held(struct repl_group *g)
{
    if (!g->snap_held)
        return;
    struct raft_install_snapshot *is = &g->snap_msg.install_snapshot;
    raft_configuration_close(&is->conf);
    raft_free(is->data.base);
    g->snap_held = false;
}

/* Hands m to raft; an install raft will ignore (it is installing one already) loses its
 * payload first, which raft would never free. The check and raft's own run in the same
 * synchronous call, so the state cannot change between them. */
static void pass_to_raft(struct repl_group *g, struct raft_message *m)
{
    if (m->type == RAFT_INSTALL_SNAPSHOT && g->raft.snapshot.installing) {
        struct raft_install_snapshot *is = &m->install_snapshot;
        raft_configuration_close(&is->conf);
        raft_configuration_init(&is->conf);
        raft_free(is->data.base);
        is->data.base = NULL;
        is->data.len = 0;
        g->snap_stripped_total++;
        log_info("group %u: snapshot install from %llu ignored, one is being installed",
                 g->group_id, (unsigned long long)m->server_id);
    }
    g->raft_recv(&g->io, m);
}

static void recv_guard(struct raft_io *io, struct raft_message *m)
{
    struct repl_group *g = io_group(io);
    if (m->type != RAFT_INSTALL_SNAPSHOT || !g->raft.legacy.snapshot_taking) {
        pass_to_raft(g, m);
        return;
    }
    drop_held(g); /* superseded: the newer snapshot covers at least as much */
    g->snap_msg = *m;
    snprintf(g->snap_from, sizeof g->snap_from, "%s", m->server_address ? m->server_address : "");
    g->snap_msg.server_address = g->snap_from;
    g->snap_held = true;
    g->snap_held_total++;
    log_info("group %u: snapshot install from %llu held until the local snapshot is written",
             g->group_id, (unsigned long long)m->server_id);
}

static int start_guard(struct raft_io *io, unsigned msecs, raft_io_tick_cb tick,
                       raft_io_recv_cb recv)
{
    struct repl_group *g = io_group(io);
    g->raft_recv = recv;
    return g->io_start(io, msecs, tick, recv_guard);
}

void snapguard_init(struct repl_group *g)
{
    g->io_start = g->io.start;
    g->io.start = start_guard;
}

void snapguard_flush(struct repl_group *g)
{
    if (!g->snap_held || g->raft.legacy.snapshot_taking || g->state == G_CLOSING)
        return;
    struct raft_message m = g->snap_msg;
    g->snap_held = false; /* ownership of the buffers passes to raft */
    pass_to_raft(g, &m);
}

void snapguard_free(struct repl_group *g)
{
    drop_held(g);
}
