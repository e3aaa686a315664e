/*
 * ambient-cni: the chained CNI plugin of ambient-mesh. A relay: every decision is the node agent's.
 *
 * The container runtime runs it on the host for each pod sandbox (CNI spec, containernetworking/cni
 * SPEC.md): the network configuration on stdin (with prevResult, the result of the plugins before it),
 * CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH in the environment, the
 * result JSON on stdout, errors as {"cniVersion","code","msg","details"} with a non-zero exit.
 *
 * - VERSION is answered here.
 * - A pod of a namespace in the config's "exclude_namespaces" (default ["kube-system"]) is passed
 *   through here, without the agent: what the node needs before the mesh is up must start without it.
 * - ADD, DEL, CHECK: {"command", "env": {CNI_*}, "config": "<stdin as a string>"} is written to the
 *   agent's Unix socket (the config's "agent_socket", default /var/run/ambient/cni.sock), the write
 *   side shut, and the answer "<exit status>\n<stdout>" read back, printed, and exited with.
 * - The agent unreachable, or silent past the deadline (the config's "agent_timeout", seconds, default
 *   30): ADD fails (code 11, try again later, naming the socket), so no ambient pod starts uncaptured
 *   and the runtime retries the sandbox; DEL and CHECK succeed (nothing of ours to undo or check).
 *
 * Bounded: stdin, the answer and each string read from the config; one deadline over connect, write
 * and read. No heap growth beyond those bounds, no dependency beyond libc: the host has no Python.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_STDIN (128 * 1024)      /* a conflist entry plus prevResult is a few KiB */
#define MAX_ANSWER (256 * 1024)     /* prevResult passed back, or an error object */
#define MAX_STRING 1024             /* socket path, cniVersion, a namespace name */
#define AGENT_TIMEOUT_S 30          /* the agent asks the API server and attaches the capture */
#define MAX_AGENT_TIMEOUT_S 300     /* the config's "agent_timeout" (seconds) may set 1 to this */
#define DEFAULT_SOCKET "/var/run/ambient/cni.sock"
#define SUPPORTED "[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\",\"1.1.0\"]"
#define LATEST "1.1.0"
#define ERR_DECODE 6
#define ERR_INVALID_ENV 4
#define ERR_IO 5
#define ERR_TRY_AGAIN 11

static char version[MAX_STRING] = LATEST;

/* Print the CNI error object (msg and details JSON-escaped) and exit 1. */
static void json_escaped(FILE *out, const char *s, size_t n);

static void fail(int code, const char *msg, const char *fmt, ...) {
    char details[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(details, sizeof details, fmt, ap);
    va_end(ap);
    printf("{\"cniVersion\":\"%s\",\"code\":%d,\"msg\":", version, code);
    json_escaped(stdout, msg, strlen(msg));
    printf(",\"details\":");
    json_escaped(stdout, details, strlen(details));
    printf("}\n");
    fprintf(stderr, "ambient-cni: %s: %s\n", msg, details);
    exit(1);
}

static void json_escaped(FILE *out, const char *s, size_t n) {
    fputc('"', out);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') fprintf(out, "\\%c", c);
        else if (c < 0x20) fprintf(out, "\\u%04x", c);
        else fputc(c, out);
    }
    fputc('"', out);
}

/* --- a minimal JSON scanner: enough to find top-level keys and skip any value ---------------- */

static const char *ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* The end of the string starting at p (on its opening quote), or NULL if it is malformed. */
static const char *skip_string(const char *p, const char *end) {
    for (p++; p < end; p++) {
        if (*p == '\\') { if (++p >= end) return NULL; }
        else if (*p == '"') return p + 1;
        else if ((unsigned char)*p < 0x20) return NULL;
    }
    return NULL;
}

/* The end of the value starting at p, or NULL. Nesting is bounded by MAX_STDIN itself. */
static const char *skip_value(const char *p, const char *end, int depth) {
    p = ws(p, end);
    if (p >= end || depth > 64) return NULL;
    if (*p == '"') return skip_string(p, end);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = ws(p + 1, end);
        if (p < end && *p == close) return p + 1;
        for (;;) {
            if (close == '}') {
                if (p >= end || *p != '"' || !(p = skip_string(p, end))) return NULL;
                p = ws(p, end);
                if (p >= end || *p++ != ':') return NULL;
            }
            if (!(p = skip_value(p, end, depth + 1))) return NULL;
            p = ws(p, end);
            if (p < end && *p == ',') { p = ws(p + 1, end); continue; }
            if (p < end && *p == close) return p + 1;
            return NULL;
        }
    }
    const char *start = p;
    while (p < end && strchr("+-0123456789.eEtruefalsn", *p)) p++;
    return p > start ? p : NULL;
}

/* Check that [p, end) is one JSON object; find the raw value of its top-level key (NULL: absent). */
static int top_level(const char *p, const char *end, const char *key, const char **value, const char **vend) {
    *value = *vend = NULL;
    p = ws(p, end);
    if (p >= end || *p != '{') return -1;
    p = ws(p + 1, end);
    if (p < end && *p == '}') return ws(p + 1, end) == end ? 0 : -1;
    for (;;) {
        const char *k = p, *kend;
        if (p >= end || *p != '"' || !(kend = skip_string(p, end))) return -1;
        p = ws(kend, end);
        if (p >= end || *p++ != ':') return -1;
        const char *v = ws(p, end);
        if (!(p = skip_value(v, end, 1))) return -1;
        if ((size_t)(kend - k - 2) == strlen(key) && !memcmp(k + 1, key, strlen(key)) && !*value) {
            *value = v;
            *vend = p;
        }
        p = ws(p, end);
        if (p < end && *p == ',') { p = ws(p + 1, end); continue; }
        if (p < end && *p == '}') return ws(p + 1, end) == end ? 0 : -1;
        return -1;
    }
}

/* Copy a JSON string value without escapes into out; -1 if it is not one or is too long. */
static int plain_string(const char *v, const char *vend, char *out, size_t size) {
    if (!v || *v != '"' || vend - v < 2 || (size_t)(vend - v - 2) >= size) return -1;
    if (memchr(v + 1, '\\', vend - v - 2)) return -1;
    memcpy(out, v + 1, vend - v - 2);
    out[vend - v - 2] = 0;
    return 0;
}

/* Whether namespace is in the JSON array of strings [v, vend) (absent: ["kube-system"]). */
static int excluded(const char *v, const char *vend, const char *namespace) {
    if (!v) return strcmp(namespace, "kube-system") == 0;
    const char *p = ws(v + 1, vend);
    while (p < vend && *p == '"') {
        const char *e = skip_string(p, vend);
        char name[MAX_STRING];
        if (e && plain_string(p, e, name, sizeof name) == 0 && strcmp(name, namespace) == 0) return 1;
        if (!e) return 0;
        p = ws(e, vend);
        if (p < vend && *p == ',') p = ws(p + 1, vend);
    }
    return 0;
}

/* K8S_POD_NAMESPACE from CNI_ARGS ("K=V;K=V"), or "". */
static void pod_namespace(const char *args, char *out, size_t size) {
    const char *key = "K8S_POD_NAMESPACE=";
    out[0] = 0;
    for (const char *p = args; p && *p; ) {
        const char *semi = strchr(p, ';');
        size_t n = semi ? (size_t)(semi - p) : strlen(p);
        if (n > strlen(key) && !strncmp(p, key, strlen(key)) && n - strlen(key) < size) {
            memcpy(out, p + strlen(key), n - strlen(key));
            out[n - strlen(key)] = 0;
        }
        p = semi ? semi + 1 : NULL;
    }
}

/* --- the relay -------------------------------------------------------------------------------- */

static long long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Wait for events on fd until the deadline; 0 when ready, -1 with errno (ETIMEDOUT) otherwise. */
static int wait_fd(int fd, short events, long long deadline) {
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0) { errno = ETIMEDOUT; return -1; }
        struct pollfd pfd = {.fd = fd, .events = events};
        int n = poll(&pfd, 1, (int)left);
        if (n > 0) return 0;
        if (n < 0 && errno != EINTR) return -1;
    }
}

static char *request_buf;
static size_t request_len, request_cap;

static void append(const char *s, size_t n) {
    if (request_len + n > request_cap) fail(ERR_IO, "request too large", "%zu bytes", request_len + n);
    memcpy(request_buf + request_len, s, n);
    request_len += n;
}

static void append_string(const char *s, size_t n) {
    append("\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c == '"' || c == '\\') { esc[0] = '\\'; esc[1] = (char)c; append(esc, 2); }
        else if (c < 0x20) { snprintf(esc, sizeof esc, "\\u%04x", c); append(esc, 6); }
        else append((const char *)&s[i], 1);
    }
    append("\"", 1);
}

/* Relay to the agent; on success prints its answer and exits with its status. Returns only on a
 * failure to reach it, with errno set and *what naming the step. */
static void relay(const char *socket_path, long timeout_s, const char *command, const char *in, size_t in_len,
                  const char **what) {
    static const char *vars[] = {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS",
                                 "CNI_PATH"};
    request_cap = in_len * 6 + 64 * 1024; /* every byte escaped at worst, plus the env */
    request_buf = malloc(request_cap);
    if (!request_buf) fail(ERR_IO, "out of memory", "%zu bytes", request_cap);
    append("{\"command\":", 11);
    append_string(command, strlen(command));
    append(",\"env\":{", 8);
    int first = 1;
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *value = getenv(vars[i]);
        if (!value) continue;
        if (strlen(value) > 4096) fail(ERR_INVALID_ENV, "environment variable too long", "%s", vars[i]);
        if (!first) append(",", 1);
        first = 0;
        append_string(vars[i], strlen(vars[i]));
        append(":", 1);
        append_string(value, strlen(value));
    }
    append("},\"config\":", 11);
    append_string(in, in_len);
    append("}", 1);

    long long deadline = now_ms() + timeout_s * 1000;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    *what = "connect";
    if (strlen(socket_path) >= sizeof addr.sun_path) { errno = ENAMETOOLONG; return; }
    strcpy(addr.sun_path, socket_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        if (errno != EINPROGRESS && errno != EAGAIN) return;
        if (wait_fd(fd, POLLOUT, deadline) < 0) return;
    }
    *what = "send";
    for (size_t sent = 0; sent < request_len; ) {
        if (wait_fd(fd, POLLOUT, deadline) < 0) return;
        ssize_t n = send(fd, request_buf + sent, request_len - sent, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EINTR) return;
        if (n > 0) sent += (size_t)n;
    }
    shutdown(fd, SHUT_WR);
    *what = "read the answer";
    static char answer[MAX_ANSWER + 1];
    size_t got = 0;
    for (;;) {
        if (wait_fd(fd, POLLIN, deadline) < 0) return;
        ssize_t n = read(fd, answer + got, MAX_ANSWER + 1 - got);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n < 0) return;
        if (n == 0) break;
        got += (size_t)n;
        if (got > MAX_ANSWER) fail(ERR_IO, "the node agent's answer is too large", "over %d bytes", MAX_ANSWER);
    }
    close(fd);
    answer[got] = 0;
    char *newline = memchr(answer, '\n', got);
    char *endp;
    long status = newline ? strtol(answer, &endp, 10) : -1;
    if (!newline || endp != newline || status < 0 || status > 255)
        fail(ERR_IO, "malformed answer from the node agent", "on %s", socket_path);
    fwrite(newline + 1, 1, got - (size_t)(newline + 1 - answer), stdout);
    fflush(stdout);
    exit((int)status);
}

int main(void) {
    const char *command = getenv("CNI_COMMAND");
    if (!command || !*command) fail(ERR_INVALID_ENV, "CNI_COMMAND is not set", "one of ADD, DEL, CHECK, VERSION");

    static char in[MAX_STDIN + 1];
    size_t in_len = 0;
    for (;;) {
        ssize_t n = read(0, in + in_len, MAX_STDIN + 1 - in_len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail(ERR_IO, "cannot read stdin", "%s", strerror(errno));
        if (n == 0) break;
        in_len += (size_t)n;
        if (in_len > MAX_STDIN) fail(ERR_DECODE, "network configuration too large", "over %d bytes", MAX_STDIN);
    }
    const char *end = in + in_len, *v, *vend;
    if (top_level(in, end, "cniVersion", &v, &vend) < 0)
        fail(ERR_DECODE, "the network configuration on stdin is not a JSON object", "%zu bytes read", in_len);
    if (v && plain_string(v, vend, version, sizeof version) < 0) strcpy(version, LATEST);

    if (!strcmp(command, "VERSION")) {
        printf("{\"cniVersion\":\"%s\",\"supportedVersions\":" SUPPORTED "}\n", version);
        return 0;
    }
    if (strcmp(command, "ADD") && strcmp(command, "DEL") && strcmp(command, "CHECK"))
        fail(ERR_INVALID_ENV, "unsupported CNI_COMMAND", "%s", command);

    char socket_path[MAX_STRING] = DEFAULT_SOCKET, namespace[MAX_STRING];
    top_level(in, end, "agent_socket", &v, &vend);
    if (v && plain_string(v, vend, socket_path, sizeof socket_path) < 0)
        fail(7, "agent_socket must be a plain string", "at most %d characters", MAX_STRING - 1);
    long timeout_s = AGENT_TIMEOUT_S;
    top_level(in, end, "agent_timeout", &v, &vend);
    if (v) {
        char *number_end;
        timeout_s = strtol(v, &number_end, 10);
        if (number_end != vend || timeout_s < 1 || timeout_s > MAX_AGENT_TIMEOUT_S)
            fail(7, "agent_timeout must be a whole number of seconds", "from 1 to %d", MAX_AGENT_TIMEOUT_S);
    }
    pod_namespace(getenv("CNI_ARGS"), namespace, sizeof namespace);
    top_level(in, end, "exclude_namespaces", &v, &vend);
    if (*namespace && excluded(v, vend, namespace)) {
        if (!strcmp(command, "ADD")) {
            top_level(in, end, "prevResult", &v, &vend);
            if (v) fwrite(v, 1, (size_t)(vend - v), stdout);
            else printf("{\"cniVersion\":\"%s\"}", version);
            putchar('\n');
        }
        return 0;
    }

    const char *what = "connect";
    relay(socket_path, timeout_s, command, in, in_len, &what);
    int err = errno;
    if (!strcmp(command, "ADD"))
        fail(ERR_TRY_AGAIN, "the ambient node agent is unreachable", "%s %s: %s", what, socket_path, strerror(err));
    fprintf(stderr, "ambient-cni: %s: node agent unreachable (%s %s: %s); nothing to do\n", command, what,
            socket_path, strerror(err));
    return 0;
}
