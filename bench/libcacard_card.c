/*
 * libcacard_card.c - the reference peer for scripts/bench.sh: libcacard's CAC card (Debian's
 * libcacard-dev), driven the same way our benchmarks drive vccid's card.
 *
 *   libcacard_card bench DBDIR      in-process: OpenSC's certificate-read sequence, SELECT,
 *                                   chained RSA-2048 SIGN; prints lines in the format of
 *                                   `cargo bench -p card`
 *   libcacard_card vpcd DBDIR PORT  serves the card to vpcd at 127.0.0.1:PORT (u16 big-endian
 *                                   length framing; 00 off, 01 on, 02 reset, 04 get ATR)
 *
 * DBDIR is an NSS database holding cert1..cert3 (the seed's certutil recipe, empty password).
 * Written for this project; it only calls libcacard's public API.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <libcacard.h>

static VReader *reader;
static unsigned char rbuf[65536 + 2];
static long napdu;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int xfer_raw(unsigned char *cmd, int len) {
    int rlen = sizeof rbuf;
    napdu++;
    if (vreader_xfr_bytes(reader, cmd, len, rbuf, &rlen) != VREADER_OK) {
        fprintf(stderr, "xfr failed\n");
        exit(1);
    }
    return rlen;
}

/* Sends a command; follows 61xx with GET RESPONSE like a T=0 reader; returns data length
 * (data in out) and the final SW. */
static int xfer(unsigned char *cmd, int len, unsigned char *out, int *sw) {
    int n = 0, rlen = xfer_raw(cmd, len);
    for (;;) {
        *sw = (rbuf[rlen - 2] << 8) | rbuf[rlen - 1];
        if (out) memcpy(out + n, rbuf, rlen - 2);
        n += rlen - 2;
        if ((*sw >> 8) != 0x61) return n;
        unsigned char gr[5] = {0x00, 0xC0, 0x00, 0x00, (unsigned char)(*sw & 0xFF)};
        rlen = xfer_raw(gr, 5);
    }
}

static int hex(const char *s, unsigned char *out) {
    int n = 0;
    while (*s) {
        while (*s == ' ') s++;
        if (!*s) break;
        unsigned v;
        sscanf(s, "%2x", &v);
        out[n++] = (unsigned char)v;
        s += 2;
    }
    return n;
}

static int send_hex(const char *s, unsigned char *out, int *sw) {
    unsigned char cmd[300];
    int n = hex(s, cmd);
    return xfer(cmd, n, out, sw);
}

static int read_buffer(int type, unsigned char *out) {
    unsigned char cmd[8] = {0x00, 0x52, 0x00, 0x00, 0x02, (unsigned char)type, 0x02};
    unsigned char lenb[4];
    int sw;
    xfer(cmd, 7, lenb, &sw);
    int total = (lenb[0] | (lenb[1] << 8)) + 2, off = 2, got = 0;
    while (off < total) {
        int k = total - off > 240 ? 240 : total - off;
        unsigned char c[7] = {0x00, 0x52, (unsigned char)(off >> 8), (unsigned char)off, 0x02,
                              (unsigned char)type, (unsigned char)k};
        got += xfer(c, 7, out ? out + got : NULL, &sw);
        off += k;
    }
    return got;
}

static void read_all_certs(void) {
    static unsigned char buf[8192];
    char s[64];
    int sw;
    send_hex("00 A4 04 00 07 A0 00 00 01 16 DB 00", NULL, &sw);
    read_buffer(1, NULL);
    read_buffer(2, NULL);
    for (int i = 0; i < 3; i++) {
        snprintf(s, sizeof s, "00 A4 04 00 07 A0 00 00 00 79 01 %02X", i);
        send_hex(s, NULL, &sw);
        snprintf(s, sizeof s, "00 A4 02 00 02 01 %02X", i);
        send_hex(s, NULL, &sw);
        send_hex("00 56 01 00 FF", NULL, &sw);
        snprintf(s, sizeof s, "00 56 01 00 %02X", sw & 0xFF);
        send_hex(s, NULL, &sw);
        read_buffer(1, NULL);
        if (read_buffer(2, buf) < 600) { fprintf(stderr, "certificate not read\n"); exit(1); }
    }
}

static void init(const char *db) {
    char opts[1024];
    snprintf(opts, sizeof opts, "db=\"sql:%s\" use_hw=no soft=(,Test,CAC,,cert1,cert2,cert3)", db);
    VCardEmulOptions *o = vcard_emul_options(opts);
    if (!o || vcard_emul_init(o) != VCARD_EMUL_OK) { fprintf(stderr, "vcard_emul_init failed\n"); exit(1); }
    VReaderList *list = vreader_get_reader_list();
    reader = vreader_list_get_reader(vreader_list_get_first(list));
    if (!reader || vreader_card_is_present(reader) != VREADER_OK) { fprintf(stderr, "no card\n"); exit(1); }
}

static int bench(void) {
    unsigned char atr[64];
    int alen = sizeof atr, sw;
    vreader_power_on(reader, atr, &alen);
    napdu = 0;
    read_all_certs();
    long per = napdu;
    int rounds = 2000;
    napdu = 0;
    double t = now();
    for (int i = 0; i < rounds; i++) read_all_certs();
    double dt = now() - t;
    printf("read_certs: %ld APDUs per pass; %.0f APDUs/s; %.2f µs/APDU; %.1f µs per pass\n", per,
           napdu / dt, dt * 1e6 / napdu, dt * 1e6 / rounds);
    unsigned char sel[13];
    int sl = hex("00 A4 04 00 07 A0 00 00 01 16 DB 00 00", sel);
    int n = 200000;
    t = now();
    for (int i = 0; i < n; i++) xfer_raw(sel, sl);
    printf("select: %.2f µs/APDU\n", (now() - t) * 1e6 / n);
    send_hex("00 20 00 00 08 31 32 33 34 35 36 37 38", NULL, &sw);
    send_hex("00 A4 04 00 07 A0 00 00 00 79 01 00", NULL, &sw);
    unsigned char block[256], first[5 + 240], last[5 + 16], sig[300];
    memset(block, 0xFF, sizeof block);
    block[0] = 0; block[1] = 1; block[200] = 0;
    memcpy(first, "\x00\x42\x80\x00\xF0", 5); memcpy(first + 5, block, 240);
    memcpy(last, "\x00\x42\x00\x00\x10", 5); memcpy(last + 5, block + 240, 16);
    n = 500;
    t = now();
    for (int i = 0; i < n; i++) {
        xfer(first, sizeof first, NULL, &sw);
        if (xfer(last, sizeof last, sig, &sw) != 256 || sw != 0x9000) { fprintf(stderr, "sign failed %04X\n", sw); return 1; }
    }
    printf("sign: RSA-2048 chained CAC SIGN %.3f ms/op\n", (now() - t) * 1e3 / n);
    return 0;
}

static int readn(int fd, unsigned char *b, int n) {
    int got = 0;
    while (got < n) {
        int r = read(fd, b + got, n - got);
        if (r <= 0) return -1;
        got += r;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
    }
    return 0;
}

static int serve(int port) {
    static unsigned char msg[65536], out[65536 + 2];
    unsigned char atr[64];
    int alen = sizeof atr;
    vreader_power_on(reader, atr, &alen);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int fd = -1;
    for (int tries = 0; tries < 200; tries++) {
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) break;
        close(fd); fd = -1;
        usleep(50000);
    }
    if (fd < 0) { fprintf(stderr, "cannot connect to vpcd\n"); return 1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    for (;;) {
        unsigned char lb[2];
        if (readn(fd, lb, 2)) return 0;
        int len = (lb[0] << 8) | lb[1];
        if (len == 0 || readn(fd, msg, len)) return 0;
        int olen = -1;
        if (len == 1) {
            if (msg[0] == 0x04) { memcpy(out + 2, atr, alen); olen = alen; }
            else if (msg[0] == 0x01 || msg[0] == 0x02) { alen = sizeof atr; vreader_power_on(reader, atr, &alen); }
            else if (msg[0] == 0x00) vreader_power_off(reader);
        } else {
            int rlen = sizeof out - 2;
            if (vreader_xfr_bytes(reader, msg, len, out + 2, &rlen) != VREADER_OK) return 1;
            olen = rlen;
        }
        if (olen > 0) {
            out[0] = olen >> 8; out[1] = olen & 0xFF;
            if (write(fd, out, olen + 2) != olen + 2) return 0;
        }
    }
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "bench")) { init(argv[2]); return bench(); }
    if (argc >= 4 && !strcmp(argv[1], "vpcd")) { init(argv[2]); return serve(atoi(argv[3])); }
    fprintf(stderr, "usage: %s bench DBDIR | vpcd DBDIR PORT\n", argv[0]);
    return 2;
}
