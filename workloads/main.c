/* lpw: lazy-pages test workload. Command line and dispatch; see README.md. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "lpw.h"

struct proc P = { .role = "main" };
struct opts O = { .mib = 64, .every = 4, .children = 2, .threads = 4,
		  .seed = 0x6c617a7970616765ULL /* "lazypage" */ };
size_t page_size;

/* Main's ready file is written last: it is the one file the harness waits for. */
void main_ready(void)
{
	write_ready("ready");
	if (O.corrupt && P.nreg) {
		const struct region *r = &P.reg[0];
		volatile unsigned char *c =
			(unsigned char *)(r->addr + r->pages / 2 * page_size + 123);

		*c ^= 0x5a; /* debug: proves that verification can fail */
	}
}

static void usage(void)
{
	fprintf(stderr,
		"usage: lpw <dense|sparse|tree|threads|churn> --state DIR [--mib N]\n"
		"           [--every K] [--children C] [--zombie] [--threads T] [--seed S]\n");
	exit(2);
}

static unsigned num(const char *s)
{
	char *end;
	unsigned long v = strtoul(s, &end, 0);

	if (*s == '\0' || *end || v > 1u << 20)
		usage();
	return v;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "state", required_argument, NULL, 's' },
		{ "mib", required_argument, NULL, 'm' },
		{ "every", required_argument, NULL, 'e' },
		{ "children", required_argument, NULL, 'c' },
		{ "threads", required_argument, NULL, 't' },
		{ "seed", required_argument, NULL, 'S' },
		{ "zombie", no_argument, NULL, 'z' },
		{ "corrupt-after-ready", no_argument, NULL, 'X' },
		{ 0 }
	};
	const char *cmd;
	int c;

	if (argc < 2)
		usage();
	cmd = argv[1];
	P.workload = cmd;
	optind = 2;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 's': O.state = optarg; break;
		case 'm': O.mib = num(optarg); break;
		case 'e': O.every = num(optarg); break;
		case 'c': O.children = num(optarg); break;
		case 't': O.threads = num(optarg); break;
		case 'S': O.seed = strtoull(optarg, NULL, 0); break;
		case 'z': O.zombie = 1; break;
		case 'X': O.corrupt = 1; break;
		default: usage();
		}
	}
	if (!O.state || optind != argc || !O.mib || !O.every)
		usage();
	/* Inherited fds (pipes, ttys of the launcher) would be external state for CRIU. */
	close_range(3, ~0U, 0);
	page_size = sysconf(_SC_PAGESIZE);
	mkdir(O.state, 0755);
	signals_install();
	clear_stale();
	if (!strcmp(cmd, "dense"))
		run_dense();
	if (!strcmp(cmd, "sparse"))
		run_sparse();
	if (!strcmp(cmd, "tree"))
		run_tree();
	if (!strcmp(cmd, "threads"))
		run_threads();
	if (!strcmp(cmd, "churn"))
		run_churn();
	die("unknown workload '%s'", cmd);
}
