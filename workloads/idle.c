/*
 * Signal handling and the idle loop shared by every process and shape.
 * Handlers only set flags; a 50 ms relative nanosleep poll is used instead of
 * sigsuspend/timers because it survives checkpoint/restore without mask games.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "lpw.h"

static volatile sig_atomic_t want_verify, want_churn, want_exit;

static void on_signal(int sig)
{
	if (sig == SIGUSR1)
		want_verify = 1;
	else if (sig == SIGUSR2)
		want_churn = 1;
	else
		want_exit = 1;
}

void signals_install(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL); /* default action would kill shapes that ignore it */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGHUP, SIG_IGN);       /* setsid leader: a stray hangup must not end a test */
}

/* Forked processes get their own role, sequence and (no) children. */
pid_t fork_role(const char *role)
{
	pid_t pid = fork();

	if (pid < 0)
		die("fork %s failed", role);
	if (pid == 0) {
		/* Regions are inherited; the caller trims/retypes them as the shape requires. */
		memset(P.role, 0, sizeof(P.role));
		strncpy(P.role, role, sizeof(P.role) - 1);
		P.nchild = 0;
		P.seq = 0;
		want_verify = want_churn = want_exit = 0;
	}
	return pid;
}

static void terminate(void)
{
	int i;

	/* Only main has children; take them down so a lone SIGTERM to main cleans up. */
	for (i = 0; i < P.nchild; i++)
		kill(P.child[i], SIGTERM);
	for (i = 0; i < P.nchild; i++)
		while (waitpid(P.child[i], NULL, 0) < 0 && errno == EINTR)
			;
	exit(0);
}

void idle_loop(void (*on_usr2)(void))
{
	const struct timespec tick = { 0, 50 * 1000 * 1000 };

	for (;;) {
		if (want_exit)
			terminate();
		if (want_churn) {
			want_churn = 0;
			if (on_usr2)
				on_usr2();
		}
		if (want_verify) {
			want_verify = 0;
			verify_and_report("usr1");
		}
		nanosleep(&tick, NULL);
	}
}
