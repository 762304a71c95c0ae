/*
 * restore-peer: plays `criu restore --lazy-pages` on lazy-pages.socket, one scripted
 * message at a time, so tests can send what a real criu never would (a pid twice, a
 * live pid as a zombie, an eventfd for a uffd, silence).
 *
 * usage: restore-peer SOCKET STEP...
 *   pid:N       the 4-byte pid word (negative = zombie)
 *   uffd        one byte carrying a fresh userfaultfd (API negotiated), as criu sends it
 *   eventfd | pipe | devnull   one byte carrying that descriptor instead
 *   finish      RESTORE_FINISHED
 *   sleep:MS    pause
 *   hold        wait until the daemon hangs up (at most 60 s), then exit 0
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

static void die(const char *what)
{
	fprintf(stderr, "restore-peer: %s: %s\n", what, strerror(errno));
	exit(2);
}

static int new_uffd(void)
{
	int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	struct uffdio_api api = { .api = UFFD_API };

	if (fd < 0)
		die("userfaultfd");
	if (ioctl(fd, UFFDIO_API, &api))
		die("UFFDIO_API");
	return fd;
}

static void send_fd(int sock, int fd)
{
	char byte = 0, buf[CMSG_SPACE(sizeof(int))] = { 0 };
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = buf, .msg_controllen = sizeof(buf) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);

	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(sock, &msg, MSG_NOSIGNAL) != 1)
		die("sendmsg");
}

static void send_word(int sock, int32_t word)
{
	if (send(sock, &word, 4, MSG_NOSIGNAL) != 4)
		die("send");
}

int main(int argc, char **argv)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int sock, i, p[2];

	if (argc < 2 || strlen(argv[1]) >= sizeof(addr.sun_path)) {
		fprintf(stderr, "usage: restore-peer SOCKET STEP...\n");
		return 2;
	}
	strcpy(addr.sun_path, argv[1]);
	sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof(addr)))
		die("connect");
	for (i = 2; i < argc; i++) {
		const char *s = argv[i];

		if (!strncmp(s, "pid:", 4)) {
			send_word(sock, atoi(s + 4));
		} else if (!strcmp(s, "uffd")) {
			send_fd(sock, new_uffd());
		} else if (!strcmp(s, "eventfd")) {
			send_fd(sock, eventfd(0, EFD_CLOEXEC));
		} else if (!strcmp(s, "pipe")) {
			if (pipe(p))
				die("pipe");
			send_fd(sock, p[0]);
		} else if (!strcmp(s, "devnull")) {
			send_fd(sock, open("/dev/null", O_RDWR | O_CLOEXEC));
		} else if (!strcmp(s, "finish")) {
			send_word(sock, 0x52535446);
		} else if (!strncmp(s, "sleep:", 6)) {
			usleep(atoi(s + 6) * 1000);
		} else if (!strcmp(s, "hold")) {
			struct pollfd pfd = { .fd = sock, .events = POLLIN };
			char c;

			while (poll(&pfd, 1, 60000) == 1 && read(sock, &c, 1) > 0)
				;
		} else {
			fprintf(stderr, "restore-peer: unknown step %s\n", s);
			return 2;
		}
	}
	return 0;
}
