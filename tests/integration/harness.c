/* Integration-test harness, process side: checks, the temporary directory, server
 * processes (start, signal, wait, kill) and cleanup on every exit path. See harness.h;
 * client helpers are in harness_client.c, raw sockets in harness_raw.c. */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int h_passed, h_failed;

static const char *server_path;
/* Short enough that every path built under it fits H_PATH_MAX. */
static char tmpdir[H_PATH_MAX / 2];

/* Every process we started and have not reaped. Read by the signal handler, so plain
 * words only (sig_atomic_t-sized pid slots). */
#define MAX_PROCS 64
static volatile pid_t procs[MAX_PROCS];

/* Every log file ever written, for the failure dump. */
#define MAX_LOGS 32
static char logs[MAX_LOGS][H_PATH_MAX];
static int nlogs;

/* ---- Checks --------------------------------------------------------------------------- */

bool h_check(bool ok, const char *file, int line, const char *expr, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (ok) {
        h_passed++;
        printf("  ok    %s\n", msg);
    } else {
        h_failed++;
        printf("  FAIL  %s:%d: %s  [%s]\n", file, line, msg, expr);
    }
    fflush(stdout);
    return ok;
}

void h_note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("  ..    ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
}

uint64_t h_now_ms(void)
{
    return clock_mono_ns() / 1000000u;
}

void h_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- Cleanup ---------------------------------------------------------------------------- */

static void track(pid_t pid)
{
    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i] == 0) {
            procs[i] = pid;
            return;
        }
    fprintf(stderr, "harness: too many processes\n");
    kill(pid, SIGKILL);
    exit(2);
}

static void untrack(pid_t pid)
{
    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i] == pid)
            procs[i] = 0;
}

/* Async-signal-safe: kill -9 and reap everything tracked. */
static void kill_all(void)
{
    for (int i = 0; i < MAX_PROCS; i++) {
        pid_t p = procs[i];
        if (p > 0) {
            kill(p, SIGKILL);
            waitpid(p, NULL, 0);
            procs[i] = 0;
        }
    }
}

static void dump_logs(void)
{
    for (int i = 0; i < nlogs; i++) {
        FILE *f = fopen(logs[i], "r");
        if (f == NULL)
            continue;
        /* Keep the last 40 lines in a ring. */
        static char ring[40][512];
        int count = 0;
        while (fgets(ring[count % 40], sizeof ring[0], f))
            count++;
        fclose(f);
        fprintf(stderr, "---- last lines of %s ----\n", logs[i]);
        for (int k = count > 40 ? count - 40 : 0; k < count; k++)
            fputs(ring[k % 40], stderr);
    }
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path) ? -1 : 0;
}

int h_remove_tree(const char *path)
{
    size_t n = strlen(tmpdir);
    if (tmpdir[0] == '\0' || strncmp(path, tmpdir, n) != 0) {
        fprintf(stderr, "harness: refusing to remove %s (outside %s)\n", path, tmpdir);
        return -1;
    }
    if (access(path, F_OK) != 0)
        return 0;
    return nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

void h_cleanup(void)
{
    static bool done;
    if (done)
        return;
    done = true;
    kill_all();
    if (h_failed > 0)
        dump_logs();
    if (tmpdir[0] == '\0')
        return;
    if (getenv("STRATA_INTEG_KEEP")) {
        fprintf(stderr, "harness: kept %s\n", tmpdir);
        return;
    }
    h_remove_tree(tmpdir);
}

void h_finish(void)
{
    int running = 0;
    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i] > 0) {
            kill(procs[i], SIGTERM);
            running++;
        }
    uint64_t deadline = h_now_ms() + 10000;
    int clean = 0, unclean = 0;
    while (running > 0) {
        for (int i = 0; i < MAX_PROCS; i++) {
            pid_t p = procs[i];
            int st;
            if (p > 0 && waitpid(p, &st, WNOHANG) == p) {
                procs[i] = 0;
                running--;
                if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
                    clean++;
                else
                    unclean++;
            }
        }
        if (running == 0 || h_now_ms() >= deadline)
            break;
        h_sleep_ms(5);
    }
    CHECK(running == 0 && unclean == 0,
          "every server still running stopped on SIGTERM with status 0 (%d clean, %d not, %d "
          "hung)",
          clean, unclean, running);
    static const char *const reports[] = {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                                          "runtime error:"};
    int found = 0;
    for (int i = 0; i < nlogs; i++) {
        FILE *f = fopen(logs[i], "r");
        char line[2048];
        while (f && fgets(line, sizeof line, f))
            for (size_t k = 0; k < sizeof reports / sizeof reports[0]; k++)
                found += strstr(line, reports[k]) != NULL;
        if (f)
            fclose(f);
    }
    CHECK(found == 0, "no sanitizer report in any server log (%d)", found);
}

/* Fatal signals and the global deadline: only async-signal-safe calls (kill, waitpid,
 * fork, execve, write, _exit). */
static void on_fatal(int sig)
{
    static const char alarm_msg[] = "\nharness: global deadline reached; killing servers\n";
    static const char fatal_msg[] = "\nharness: fatal signal; killing servers\n";
    if (sig == SIGALRM)
        (void)!write(2, alarm_msg, sizeof alarm_msg - 1);
    else
        (void)!write(2, fatal_msg, sizeof fatal_msg - 1);
    kill_all();
    if (tmpdir[0] != '\0' && getenv("STRATA_INTEG_KEEP") == NULL) {
        pid_t p = fork();
        if (p == 0) {
            char *const argv[] = {"rm", "-rf", tmpdir, NULL};
            char *const envp[] = {NULL};
            execve("/bin/rm", argv, envp);
            _exit(127);
        }
        if (p > 0)
            waitpid(p, NULL, 0);
    }
    if (sig == SIGALRM || sig == SIGINT || sig == SIGTERM)
        _exit(3);
    signal(sig, SIG_DFL);
    raise(sig);
}

void h_init(const char *path, unsigned deadline_s)
{
    server_path = path;
    if (access(server_path, X_OK) != 0) {
        fprintf(stderr, "harness: server binary %s is not executable\n", server_path);
        exit(2);
    }
    const char *base = getenv("TMPDIR");
    int l =
        snprintf(tmpdir, sizeof tmpdir, "%s/strata-integ-XXXXXX", base && *base ? base : "/tmp");
    if (l < 0 || (size_t)l >= sizeof tmpdir || mkdtemp(tmpdir) == NULL) {
        fprintf(stderr, "harness: mkdtemp %s: %s\n", tmpdir, strerror(errno));
        exit(2);
    }
    atexit(h_cleanup);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fatal;
    sigemptyset(&sa.sa_mask);
    int sigs[] = {SIGALRM, SIGINT, SIGTERM, SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaction(sigs[i], &sa, NULL);
    alarm(deadline_s);
    log_set_level(LOG_WARN); /* the client library's own logs */
}

const char *h_tmpdir(void)
{
    return tmpdir;
}

void h_write_file(const char *name, const char *text, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s", tmpdir, name);
    FILE *f = fopen(out, "w");
    if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "harness: cannot write %s\n", out);
        exit(2);
    }
}

/* ---- Nodes ---------------------------------------------------------------------------- */

void h_cluster_init(struct h_cluster *c, const char *name, int n, const char *const *extra)
{
    memset(c, 0, sizeof *c);
    if (n < 1 || n > H_MAX_NODES) {
        fprintf(stderr, "harness: bad cluster size %d\n", n);
        exit(2);
    }
    c->n = n;
    /* Hold every socket until all ports are chosen, so no two nodes get the same one. */
    int fds[H_MAX_NODES];
    for (int i = 0; i < n; i++) {
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t sl = sizeof sa;
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fds[i] < 0 || bind(fds[i], (struct sockaddr *)&sa, sizeof sa) ||
            getsockname(fds[i], (struct sockaddr *)&sa, &sl)) {
            fprintf(stderr, "harness: cannot find a free port: %s\n", strerror(errno));
            exit(2);
        }
        struct h_node *nd = &c->nodes[i];
        nd->id = (uint64_t)i + 1;
        nd->port = ntohs(sa.sin_port);
        snprintf(nd->addr, sizeof nd->addr, "127.0.0.1:%d", nd->port);
        snprintf(nd->dir, sizeof nd->dir, "%s/%s-node%d", tmpdir, name, i + 1);
        snprintf(nd->log, sizeof nd->log, "%s/%s-node%d.log", tmpdir, name, i + 1);
        size_t used = strlen(c->members);
        snprintf(c->members + used, sizeof c->members - used, "%s%s", i ? "," : "", nd->addr);
        if (nlogs < MAX_LOGS)
            snprintf(logs[nlogs++], H_PATH_MAX, "%s", nd->log);
    }
    for (int i = 0; i < n; i++)
        close(fds[i]);
    size_t k = 0;
    for (; extra && extra[k] && k + 1 < sizeof c->extra / sizeof c->extra[0]; k++)
        c->extra[k] = extra[k];
    c->extra[k] = NULL;
}

static bool port_accepts(int port)
{
    int fd = h_raw_connect(port);
    if (fd < 0)
        return false;
    close(fd);
    return true;
}

int h_node_start(struct h_cluster *c, int i)
{
    struct h_node *nd = &c->nodes[i];
    if (nd->pid != 0) {
        fprintf(stderr, "harness: node %d already running\n", i + 1);
        return -1;
    }
    char et[16], ht[16];
    snprintf(et, sizeof et, "%d", H_ELECTION_MS);
    snprintf(ht, sizeof ht, "%d", H_HEARTBEAT_MS);
    const char *argv[64];
    int a = 0;
    argv[a++] = server_path;
    argv[a++] = "--data-dir";
    argv[a++] = nd->dir;
    argv[a++] = "--listen";
    argv[a++] = nd->addr;
    char idbuf[24];
    if (nd->join) {
        snprintf(idbuf, sizeof idbuf, "%llu", (unsigned long long)nd->join_id);
        argv[a++] = "--join";
        argv[a++] = nd->join;
        argv[a++] = "--node-id";
        argv[a++] = idbuf;
    } else {
        argv[a++] = "--bootstrap";
        argv[a++] = c->members;
    }
    argv[a++] = "--election-timeout-ms";
    argv[a++] = et;
    argv[a++] = "--heartbeat-timeout-ms";
    argv[a++] = ht;
    for (int k = 0; c->extra[k] && a < 62; k++)
        argv[a++] = c->extra[k];
    argv[a] = NULL;
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "harness: fork: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        /* Die with the test process, whatever kills it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(126);
        int fd = open(nd->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd < 0)
            _exit(126);
        dup2(fd, 1);
        dup2(fd, 2);
        signal(SIGPIPE, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execv(server_path, (char *const *)argv);
        _exit(127);
    }
    track(pid);
    nd->pid = pid;
    /* Listening comes right after the data dir is opened: wait at most 10 s. */
    uint64_t deadline = h_now_ms() + 10000;
    while (h_now_ms() < deadline) {
        if (!h_node_alive(c, i)) {
            fprintf(stderr, "harness: node %d exited at start (status 0x%x); log %s\n", i + 1,
                    nd->status, nd->log);
            return -1;
        }
        if (port_accepts(nd->port))
            return 0;
        h_sleep_ms(20);
    }
    fprintf(stderr, "harness: node %d never listened on %s\n", i + 1, nd->addr);
    return -1;
}

int h_cluster_start(struct h_cluster *c)
{
    for (int i = 0; i < c->n; i++)
        if (h_node_start(c, i))
            return -1;
    return 0;
}

void h_node_signal(struct h_cluster *c, int i, int sig)
{
    if (c->nodes[i].pid > 0)
        kill(c->nodes[i].pid, sig);
}

int h_node_wait_exit(struct h_cluster *c, int i, unsigned ms)
{
    struct h_node *nd = &c->nodes[i];
    if (nd->pid == 0)
        return nd->status;
    uint64_t deadline = h_now_ms() + ms;
    for (;;) {
        int st;
        pid_t r = waitpid(nd->pid, &st, WNOHANG);
        if (r == nd->pid) {
            untrack(nd->pid);
            nd->pid = 0;
            nd->status = st;
            return st;
        }
        if (h_now_ms() >= deadline)
            return -1;
        h_sleep_ms(5);
    }
}

void h_node_kill9(struct h_cluster *c, int i)
{
    struct h_node *nd = &c->nodes[i];
    if (nd->pid == 0)
        return;
    kill(nd->pid, SIGKILL);
    int st;
    waitpid(nd->pid, &st, 0);
    untrack(nd->pid);
    nd->pid = 0;
    nd->status = st;
}

bool h_node_alive(struct h_cluster *c, int i)
{
    struct h_node *nd = &c->nodes[i];
    if (nd->pid == 0)
        return false;
    int st;
    if (waitpid(nd->pid, &st, WNOHANG) == nd->pid) {
        untrack(nd->pid);
        nd->pid = 0;
        nd->status = st;
        return false;
    }
    return true;
}

int h_log_count(const struct h_cluster *c, int i, const char *needle)
{
    FILE *f = fopen(c->nodes[i].log, "r");
    if (f == NULL)
        return 0;
    char line[2048];
    int n = 0;
    while (fgets(line, sizeof line, f))
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

void h_log_grep_tail(const struct h_cluster *c, int i, const char *needle, int max)
{
    FILE *f = fopen(c->nodes[i].log, "r");
    if (f == NULL || max <= 0) {
        if (f)
            fclose(f);
        return;
    }
    enum { RING = 64 };
    static char ring[RING][512];
    int count = 0;
    char line[512];
    /* Long lines come in pieces; a piece holding the needle is kept. */
    while (fgets(line, sizeof line, f))
        if (strstr(line, needle) != NULL)
            memcpy(ring[count++ % RING], line, sizeof line);
    fclose(f);
    int keep = max < RING ? max : RING;
    fprintf(stderr, "---- node %d: last %d of %d lines with \"%s\" ----\n", i + 1,
            count < keep ? count : keep, count, needle);
    for (int k = count > keep ? count - keep : 0; k < count; k++)
        fputs(ring[k % RING], stderr);
}
