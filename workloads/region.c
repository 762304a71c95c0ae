/* Region bookkeeping: what each page of a region is expected to hold. */
#include <string.h>
#include <sys/mman.h>
#include "lpw.h"

struct region *region_add(uintptr_t addr, size_t pages, uint64_t seed, const char *shape)
{
	struct region *r;

	if (P.nreg >= LPW_MAX_REGIONS)
		die("too many regions");
	r = &P.reg[P.nreg++];
	memset(r, 0, sizeof(*r));
	r->addr = r->pat_addr = addr;
	r->pages = pages;
	r->seed = seed;
	r->shape = shape;
	r->every = 1;
	r->thread = -1;
	return r;
}

struct region *region_map(size_t pages, uint64_t seed, const char *shape)
{
	/* Private anonymous only: the daemon under test serves exactly this kind of memory. */
	void *p = mmap(NULL, pages * page_size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		die("mmap %zu pages failed", pages);
	return region_add((uintptr_t)p, pages, seed, shape);
}

/* Returns 0 if the page must read as zero, else 1 with *seed set. */
int region_page_seed(const struct region *r, size_t idx, uint64_t *seed)
{
	if (!strcmp(r->shape, "zero"))
		return 0;
	if (r->every > 1 && idx % r->every)
		return 0;
	*seed = r->seed;
	if (r->own_mod && idx % r->own_mod == r->own_rem)
		*seed = r->own_seed;
	return 1;
}

void region_fill(const struct region *r)
{
	size_t i;
	uint64_t seed;

	for (i = 0; i < r->pages; i++)
		if (region_page_seed(r, i, &seed))
			fill_page(r->addr + i * page_size, r->pat_addr + i * page_size, seed);
}
