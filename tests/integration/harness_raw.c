/* Integration-test harness, raw sockets: bytes straight to a server's port and what
 * came back (frames, ERROR codes, closes), for the bad-input tests. See harness.h. */
#include "harness.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- Raw sockets ------------------------------------------------------------------------ */

int h_raw_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

int h_raw_send(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

void h_raw_drain(int fd, unsigned ms, struct h_raw_outcome *out)
{
    memset(out, 0, sizeof *out);
    struct buf in;
    buf_init(&in);
    uint64_t deadline = h_now_ms() + ms;
    for (;;) {
        uint64_t now = h_now_ms();
        if (now >= deadline)
            break;
        struct pollfd pfd = {fd, POLLIN, 0};
        int pr = poll(&pfd, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            break;
        uint8_t tmp[4096];
        ssize_t got = recv(fd, tmp, sizeof tmp, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            out->closed = true;
            break;
        }
        if (buf_append(&in, tmp, (size_t)got))
            break;
    }
    struct proto_reader rd;
    proto_reader_init(&rd, PROTO_MAX_FRAME_DEFAULT);
    proto_reader_feed(&rd, in.data ? in.data : (uint8_t *)"", in.len);
    struct proto_frame f;
    struct err e;
    size_t consumed = 0;
    while (proto_reader_next(&rd, &f, &e) == 1) {
        out->frames++;
        consumed += 6 + f.len;
        if (f.kind == PROTO_ERROR && out->error_code == 0) {
            msgpack_zone z;
            msgpack_zone_init(&z, 256);
            int code;
            const char *m;
            size_t ml;
            if (proto_error_decode(&f, &z, &code, &m, &ml, &e) == 0) {
                out->error_code = code;
                snprintf(out->message, sizeof out->message, "%.*s", (int)ml, m);
            } else {
                out->error_code = -1; /* an ERROR frame that does not decode */
            }
            msgpack_zone_destroy(&z);
        }
    }
    out->stray = in.len - consumed;
    proto_reader_close(&rd);
    buf_close(&in);
}

int h_raw_next_frame(int fd, struct proto_reader *rd, struct proto_frame *f, unsigned ms)
{
    uint64_t deadline = h_now_ms() + ms;
    for (;;) {
        struct err e;
        int r = proto_reader_next(rd, f, &e);
        if (r == 1)
            return 1;
        if (r != 0)
            return -r;
        uint64_t now = h_now_ms();
        if (now >= deadline)
            return 0;
        struct pollfd pfd = {fd, POLLIN, 0};
        int pr = poll(&pfd, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            return 0;
        uint8_t tmp[4096];
        ssize_t got = recv(fd, tmp, sizeof tmp, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return 0;
        if (proto_reader_feed(rd, tmp, (size_t)got))
            return -STRATA_OUT_OF_MEMORY;
    }
}
