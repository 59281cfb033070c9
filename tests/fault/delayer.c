/* Network delay for the fault tests without tc netem: packets that an iptables NFQUEUE
 * rule sends to queue N are held here for a fixed delay (plus seeded jitter) and then
 * accepted, so every link the rule covers gets that much extra one-way latency.
 *
 *   strata_delayer --queue N --delay-ms D [--jitter-ms J] [--seed S] [--max-held N]
 *                  [--ready FILE]
 *
 * Order: packets between one pair of IPv4 addresses leave in the order they came (a
 * packet's release time is never before that of the pair's previous packet), so jitter
 * spreads the gaps but never reorders a TCP stream; packets of different pairs are
 * released independently (verdicts go out of id order). A packet that finds --max-held
 * packets already held is accepted at once (counted as "overflow"); the kernel queue is
 * as long and fails open (NFQA_CFG_F_FAIL_OPEN), so a full queue lets packets through
 * undelayed rather than dropping them. The rules should use --queue-bypass: with no
 * delayer bound to the queue (not started yet, or killed) packets pass undelayed instead
 * of being dropped.
 *
 * On SIGTERM or SIGINT every held packet is accepted at once and one JSON line of
 * statistics is printed on stdout: {"queue", "delay_ms", "jitter_ms", "packets",
 * "released" (when due), "flushed" (early, at the stop), "overflow", "max_held",
 * "held_ms_min", "held_ms_avg", "held_ms_max" (of the packets released when due),
 * "lost_notifications", "verdict_errors"}.
 * --ready FILE is created once the queue is bound (the caller installs its rules after).
 * Exit: 0 done, 1 runtime error (queue not available: no root, no NFQUEUE support), 2 bad
 * usage. */
/* _GNU_SOURCE comes from the build (CMakeLists.txt): ppoll, erand48. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <libnfnetlink/libnfnetlink.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2 };

/* Address pairs remembered for per-pair ordering; past this many, every new pair shares
 * one slot (which only orders more than needed). A fault test has a handful. */
#define MAX_PAIRS 256
#define RECV_BUF (256 * 1024)
#define SOCK_RCVBUF (8u << 20)

struct held {
    uint64_t due_ns, seq;
    uint32_t id;
    uint64_t arrived_ns;
};

struct pair {
    uint32_t src, dst;
    uint64_t last_due_ns;
};

struct delayer {
    struct nfq_q_handle *qh;
    uint64_t delay_ns, jitter_ns;
    unsigned short rng[3]; /* nrand48/erand48 state: seeded, so a history repeats */
    struct held *heap;     /* min-heap on (due_ns, seq) */
    size_t nheld, cap;
    struct pair pairs[MAX_PAIRS];
    size_t npairs;
    uint64_t seq;
    /* statistics */
    uint64_t packets, released, flushed, overflow, lost, max_held;
    uint64_t held_ns_sum, held_ns_min, held_ns_max; /* of packets released when due */
    int verdict_errors;
};

static volatile sig_atomic_t stop_requested;

static void on_stop(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static bool before(const struct held *a, const struct held *b)
{
    return a->due_ns < b->due_ns || (a->due_ns == b->due_ns && a->seq < b->seq);
}

static void heap_push(struct delayer *d, struct held h)
{
    size_t i = d->nheld++;
    d->heap[i] = h;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!before(&d->heap[i], &d->heap[p]))
            break;
        struct held t = d->heap[p];
        d->heap[p] = d->heap[i];
        d->heap[i] = t;
        i = p;
    }
}

static struct held heap_pop(struct delayer *d)
{
    struct held top = d->heap[0];
    d->heap[0] = d->heap[--d->nheld];
    for (size_t i = 0;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < d->nheld && before(&d->heap[l], &d->heap[m]))
            m = l;
        if (r < d->nheld && before(&d->heap[r], &d->heap[m]))
            m = r;
        if (m == i)
            break;
        struct held t = d->heap[m];
        d->heap[m] = d->heap[i];
        d->heap[i] = t;
        i = m;
    }
    return top;
}

static struct pair *pair_of(struct delayer *d, uint32_t src, uint32_t dst)
{
    for (size_t i = 0; i < d->npairs; i++)
        if (d->pairs[i].src == src && d->pairs[i].dst == dst)
            return &d->pairs[i];
    if (d->npairs < MAX_PAIRS) {
        struct pair *p = &d->pairs[d->npairs++];
        p->src = src;
        p->dst = dst;
        p->last_due_ns = 0;
        return p;
    }
    return &d->pairs[MAX_PAIRS - 1];
}

static void accept_packet(struct delayer *d, uint32_t id)
{
    /* A failed verdict leaves the packet queued until the queue is destroyed (then the
     * kernel drops it and TCP retransmits): counted, not fatal. */
    if (nfq_set_verdict(d->qh, id, NF_ACCEPT, 0, NULL) < 0)
        d->verdict_errors++;
}

static void release(struct delayer *d, const struct held *h, uint64_t now)
{
    accept_packet(d, h->id);
    if (now < h->due_ns) {
        d->flushed++; /* let go early, at the stop */
        return;
    }
    uint64_t held = now - h->arrived_ns;
    if (d->released++ == 0 || held < d->held_ns_min)
        d->held_ns_min = held;
    d->held_ns_sum += held;
    if (held > d->held_ns_max)
        d->held_ns_max = held;
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa,
                     void *data)
{
    (void)qh;
    (void)msg;
    struct delayer *d = data;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (ph == NULL)
        return 0;
    uint32_t id = ntohl(ph->packet_id);
    uint64_t now = now_ns();
    d->packets++;
    if (d->nheld == d->cap) {
        d->overflow++;
        accept_packet(d, id);
        return 0;
    }
    /* The IPv4 header's addresses name the pair; anything else shares pair 0/0. */
    unsigned char *pl = NULL;
    int n = nfq_get_payload(nfa, &pl);
    uint32_t src = 0, dst = 0;
    if (n >= 20 && (pl[0] >> 4) == 4) {
        memcpy(&src, pl + 12, 4);
        memcpy(&dst, pl + 16, 4);
    }
    uint64_t due = now + d->delay_ns;
    if (d->jitter_ns > 0)
        due += (uint64_t)(erand48(d->rng) * (double)d->jitter_ns);
    struct pair *p = pair_of(d, src, dst);
    if (due < p->last_due_ns)
        due = p->last_due_ns; /* keep the pair's order: jitter never reorders a stream */
    p->last_due_ns = due;
    heap_push(d, (struct held){.due_ns = due, .seq = d->seq++, .id = id, .arrived_ns = now});
    if (d->nheld > d->max_held)
        d->max_held = d->nheld;
    return 0;
}

static void release_due(struct delayer *d, bool all)
{
    uint64_t now = now_ns();
    while (d->nheld > 0 && (all || d->heap[0].due_ns <= now)) {
        struct held h = heap_pop(d);
        release(d, &h, now);
    }
}

static void usage(FILE *out)
{
    fprintf(out, "usage: strata_delayer --queue N --delay-ms D [--jitter-ms J] [--seed S]\n"
                 "                      [--max-held N] [--ready FILE]\n"
                 "Holds packets of NFQUEUE N for D (+ 0..J) ms, then accepts them; on\n"
                 "SIGTERM accepts every held packet and prints statistics as JSON.\n");
}

static bool parse_ul(const char *s, unsigned long lo, unsigned long hi, unsigned long *out)
{
    char *end;
    errno = 0;
    if (s == NULL || *s == '\0' || *s == '-')
        return false;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static int serve(struct delayer *d, struct nfq_handle *h)
{
    int fd = nfq_fd(h);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    char *buf = malloc(RECV_BUF);
    if (buf == NULL)
        return EXIT_RUNTIME;
    sigset_t block, orig;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    /* Signals stay blocked except inside ppoll, so a stop request cannot slip in between
     * the check and the wait. */
    sigprocmask(SIG_BLOCK, &block, &orig);
    int rc = EXIT_OK;
    while (!stop_requested) {
        struct timespec ts, *tsp = NULL;
        if (d->nheld > 0) {
            uint64_t now = now_ns(), due = d->heap[0].due_ns;
            uint64_t wait = due > now ? due - now : 0;
            ts.tv_sec = (time_t)(wait / 1000000000u);
            ts.tv_nsec = (long)(wait % 1000000000u);
            tsp = &ts;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = ppoll(&pfd, 1, tsp, &orig);
        if (pr < 0 && errno != EINTR) {
            perror("strata_delayer: ppoll");
            rc = EXIT_RUNTIME;
            break;
        }
        if (pr > 0) {
            for (;;) {
                ssize_t got = recv(fd, buf, RECV_BUF, MSG_DONTWAIT);
                if (got > 0) {
                    nfq_handle_packet(h, buf, (int)got);
                    continue;
                }
                if (got < 0 && errno == ENOBUFS) {
                    /* Notifications lost: those packets stay queued in the kernel until
                     * the queue goes (then dropped; TCP resends). Counted. */
                    d->lost++;
                    continue;
                }
                if (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    perror("strata_delayer: recv");
                    rc = EXIT_RUNTIME;
                }
                break;
            }
            if (rc)
                break;
        }
        release_due(d, false);
    }
    release_due(d, true);
    sigprocmask(SIG_SETMASK, &orig, NULL);
    free(buf);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"queue", required_argument, NULL, 'q'},  {"delay-ms", required_argument, NULL, 'd'},
        {"jitter-ms", required_argument, NULL, 'j'}, {"seed", required_argument, NULL, 's'},
        {"max-held", required_argument, NULL, 'm'}, {"ready", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    unsigned long queue = 0, delay = 0, jitter = 0, seed = 0, max_held = 65536;
    bool have_queue = false, have_delay = false;
    const char *ready = NULL;
    int c, li = 0;
    while ((c = getopt_long(argc, argv, "", longopts, &li)) != -1) {
        bool ok = true;
        switch (c) {
        case 'q':
            ok = have_queue = parse_ul(optarg, 0, 65535, &queue);
            break;
        case 'd':
            ok = have_delay = parse_ul(optarg, 0, 60000, &delay);
            break;
        case 'j':
            ok = parse_ul(optarg, 0, 60000, &jitter);
            break;
        case 's':
            ok = parse_ul(optarg, 0, ULONG_MAX, &seed);
            break;
        case 'm':
            ok = parse_ul(optarg, 1, 1u << 20, &max_held);
            break;
        case 'r':
            ready = optarg;
            break;
        case 'h':
            usage(stdout);
            return EXIT_OK;
        default:
            usage(stderr);
            return EXIT_USAGE;
        }
        if (!ok) {
            fprintf(stderr,
                    "strata_delayer: bad value '%s' for --%s (queue 0-65535, delay and "
                    "jitter 0-60000 ms, max-held 1-1048576)\n",
                    optarg, longopts[li].name);
            return EXIT_USAGE;
        }
    }
    if (optind < argc || !have_queue || !have_delay) {
        fprintf(stderr, "strata_delayer: %s\n",
                optind < argc ? "unexpected argument" : "--queue and --delay-ms are required");
        usage(stderr);
        return EXIT_USAGE;
    }

    struct delayer d = {.delay_ns = delay * 1000000u, .jitter_ns = jitter * 1000000u,
                        .cap = max_held};
    d.rng[0] = 0x330e;
    d.rng[1] = (unsigned short)seed;
    d.rng[2] = (unsigned short)(seed >> 16);
    d.heap = calloc(d.cap, sizeof *d.heap);
    if (d.heap == NULL) {
        fprintf(stderr, "strata_delayer: out of memory for %lu held packets\n", max_held);
        return EXIT_RUNTIME;
    }
    struct sigaction sa = {.sa_handler = on_stop};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int rc = EXIT_RUNTIME;
    struct nfq_handle *h = nfq_open();
    if (h == NULL) {
        perror("strata_delayer: nfq_open (needs CAP_NET_ADMIN)");
        goto err_free_heap;
    }
    d.qh = nfq_create_queue(h, (uint16_t)queue, on_packet, &d);
    if (d.qh == NULL) {
        fprintf(stderr, "strata_delayer: cannot bind queue %lu: %s\n", queue, strerror(errno));
        goto err_close;
    }
    /* Only the IPv4 header is copied to us: it names the address pair. */
    if (nfq_set_mode(d.qh, NFQNL_COPY_PACKET, 20) < 0 ||
        nfq_set_queue_maxlen(d.qh, (uint32_t)max_held) < 0) {
        fprintf(stderr, "strata_delayer: cannot configure queue %lu: %s\n", queue,
                strerror(errno));
        goto err_destroy;
    }
    /* Fail open on a full queue (pass, not drop); take loopback's large GSO packets whole
     * rather than having the kernel segment them for us. Older kernels lack the flags:
     * then a full queue drops, which the statistics cannot show, so say so. */
    uint32_t flags = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO;
    if (nfq_set_queue_flags(d.qh, flags, flags) < 0)
        fprintf(stderr, "strata_delayer: queue flags not supported (%s): a full queue drops\n",
                strerror(errno));
    nfnl_rcvbufsiz(nfq_nfnlh(h), SOCK_RCVBUF);
    if (ready) {
        FILE *f = fopen(ready, "w");
        if (f == NULL || fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f) != 0) {
            fprintf(stderr, "strata_delayer: cannot write %s: %s\n", ready, strerror(errno));
            goto err_destroy;
        }
    }
    rc = serve(&d, h);
    printf("{\"queue\":%lu,\"delay_ms\":%lu,\"jitter_ms\":%lu,\"packets\":%" PRIu64
           ",\"released\":%" PRIu64 ",\"flushed\":%" PRIu64 ",\"overflow\":%" PRIu64
           ",\"max_held\":%" PRIu64 ",\"held_ms_min\":%.2f,\"held_ms_avg\":%.2f"
           ",\"held_ms_max\":%.2f,\"lost_notifications\":%" PRIu64 ",\"verdict_errors\":%d}\n",
           queue, delay, jitter, d.packets, d.released, d.flushed, d.overflow, d.max_held,
           (double)d.held_ns_min / 1e6,
           d.released ? (double)d.held_ns_sum / (double)d.released / 1e6 : 0.0,
           (double)d.held_ns_max / 1e6, d.lost, d.verdict_errors);
    fflush(stdout);
err_destroy:
    nfq_destroy_queue(d.qh);
err_close:
    nfq_close(h);
err_free_heap:
    free(d.heap);
    return rc;
}
