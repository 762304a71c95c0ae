/*
 * Files in --state. Each is written to a tmp name, closed, then renamed, so a
 * reader never sees half a file and no fd stays open across a checkpoint.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "lpw.h"

static int write_file(const char *name, const char *data, size_t len)
{
	char tmp[4096], dst[4096];
	int fd;

	snprintf(dst, sizeof(dst), "%s/%s", O.state, name);
	snprintf(tmp, sizeof(tmp), "%s/.tmp-%s", O.state, name);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	while (len) {
		ssize_t n = write(fd, data, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			close(fd);
			return -1;
		}
		data += n;
		len -= n;
	}
	if (close(fd) || rename(tmp, dst))
		return -1;
	return 0;
}

void state_write(const char *name, const char *data, size_t len)
{
	if (write_file(name, data, len))
		die("writing %s/%s: %s", O.state, name, strerror(errno));
}

/* stderr is /dev/null under the harness, so failures also leave error-<role>.txt. */
void die(const char *fmt, ...)
{
	char msg[1024], name[64];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof(msg) - 1, fmt, ap);
	va_end(ap);
	if (n < 0 || n > (int)sizeof(msg) - 2)
		n = sizeof(msg) - 2;
	msg[n++] = '\n';
	if (write(2, msg, n) < 0) {
		/* nothing better to do */
	}
	snprintf(name, sizeof(name), "error-%s.txt", P.role[0] ? P.role : "main");
	if (O.state)
		write_file(name, msg, n);
	_exit(2);
}

static void json_region(FILE *f, const struct region *r)
{
	fprintf(f, "{\"addr\":\"0x%lx\",\"pattern_addr\":\"0x%lx\",\"pages\":%zu,"
		"\"seed\":\"0x%016llx\",\"shape\":\"%s\"",
		(unsigned long)r->addr, (unsigned long)r->pat_addr, r->pages,
		(unsigned long long)r->seed, r->shape);
	if (!strcmp(r->shape, "sparse"))
		fprintf(f, ",\"every\":%u", r->every);
	if (r->own_mod)
		fprintf(f, ",\"own_mod\":%u,\"own_rem\":%u,\"own_seed\":\"0x%016llx\"",
			r->own_mod, r->own_rem, (unsigned long long)r->own_seed);
	if (r->thread >= 0)
		fprintf(f, ",\"thread\":%d", r->thread);
	fputc('}', f);
}

/* prefix is "ready" at setup, "churned" for the layout after SIGUSR2. */
void write_ready(const char *prefix)
{
	char *buf = NULL, name[64];
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	int i;

	if (!f)
		die("open_memstream");
	fprintf(f, "{\"role\":\"%s\",\"pid\":%d,\"workload\":\"%s\",\"page_size\":%zu,\"regions\":[",
		P.role, (int)getpid(), P.workload, page_size);
	for (i = 0; i < P.nreg; i++) {
		if (i)
			fputc(',', f);
		json_region(f, &P.reg[i]);
	}
	fputc(']', f);
	if (P.nchild) {
		fputs(",\"children\":[", f);
		for (i = 0; i < P.nchild; i++)
			fprintf(f, "%s{\"role\":\"%s\",\"pid\":%d}", i ? "," : "",
				P.child_role[i], (int)P.child[i]);
		fputc(']', f);
	}
	fputs("}\n", f);
	if (fclose(f))
		die("open_memstream");
	snprintf(name, sizeof(name), "%s-%s.json", prefix, P.role);
	state_write(name, buf, len);
	free(buf);
}

/* A reused --state dir must not make the harness trust files from an earlier run. */
void clear_stale(void)
{
	static const char *const fmt[] = { "ready-%s.json", "result-%s.txt",
					   "churned-%s.json", "error-%s.txt" };
	char role[32], path[4096];
	unsigned i, k;

	for (i = 0; i < LPW_MAX_CHILDREN + 2; i++) {
		if (i == 0)
			snprintf(role, sizeof(role), "main");
		else if (i == 1)
			snprintf(role, sizeof(role), "churnchild");
		else
			snprintf(role, sizeof(role), "child%u", i - 2);
		for (k = 0; k < sizeof(fmt) / sizeof(fmt[0]); k++) {
			int n = snprintf(path, sizeof(path), "%s/", O.state);

			snprintf(path + n, sizeof(path) - n, fmt[k], role);
			unlink(path);
		}
	}
}

/* Start-up shared by the benchmark workloads (lpw-touch, lpw-hot): no inherited fds (they
 * would be external state for CRIU), the state dir, signals, and no stale files, including
 * this workload's own result file, which clear_stale does not know. */
void bench_start(const char *result_name)
{
	char path[4096];

	close_range(3, ~0U, 0);
	page_size = sysconf(_SC_PAGESIZE);
	mkdir(O.state, 0755);
	signals_install();
	clear_stale();
	snprintf(path, sizeof(path), "%s/%s", O.state, result_name);
	unlink(path);
}
