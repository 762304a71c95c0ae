/* tree: a parent region shared copy-on-write by C children that each dirty every 4th page. */
#include <errno.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
#include "lpw.h"

static void child_setup(unsigned i, int ready_fd)
{
	struct region *cow = &P.reg[0];
	size_t p;

	cow->shape = "cow";
	cow->own_mod = 4;
	cow->own_rem = i % 4;
	cow->own_seed = seed_for(O.seed, 1, i);
	/* Only own pages are written; the other 3/4 stay shared with the parent. */
	for (p = cow->own_rem; p < cow->pages; p += cow->own_mod)
		fill_page(cow->addr + p * page_size, cow->pat_addr + p * page_size, cow->own_seed);
	region_fill(region_map((1 << 20) / page_size, seed_for(O.seed, 2, i), "own"));
	write_ready("ready");
	if (write(ready_fd, "x", 1) != 1)
		die("ready pipe");
	close(ready_fd);
}

void run_tree(void)
{
	int pfd[2];
	unsigned i, got = 0;
	char role[32], buf[LPW_MAX_CHILDREN];

	if (O.children > LPW_MAX_CHILDREN - 1)
		die("--children at most %d", LPW_MAX_CHILDREN - 1);
	region_fill(region_map((size_t)O.mib * (1 << 20) / page_size, O.seed, "dense"));
	/* A pipe, not files, tells main its children are ready; it is closed before idling. */
	if (pipe(pfd))
		die("pipe");
	for (i = 0; i < O.children; i++) {
		snprintf(role, sizeof(role), "child%u", i);
		pid_t pid = fork_role(role);

		if (pid == 0) {
			close(pfd[0]);
			child_setup(i, pfd[1]);
			idle_loop(NULL);
		}
		P.child[P.nchild] = pid;
		snprintf(P.child_role[P.nchild++], sizeof(P.child_role[0]), "%s", role);
	}
	if (O.zombie) {
		pid_t pid = fork_role("zombie");
		siginfo_t si;

		if (pid == 0)
			_exit(0);
		/* WNOWAIT: be sure it is dead before ready, yet leave it unreaped. */
		while (waitid(P_PID, pid, &si, WEXITED | WNOWAIT) < 0 && errno == EINTR)
			;
		P.child[P.nchild] = pid;
		snprintf(P.child_role[P.nchild++], sizeof(P.child_role[0]), "zombie");
	}
	close(pfd[1]);
	while (got < O.children) {
		ssize_t n = read(pfd[0], buf, O.children - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("a child died before it was ready");
		got += n;
	}
	close(pfd[0]);
	main_ready();
	idle_loop(NULL);
}
