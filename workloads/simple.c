/* dense and sparse: one region in one process. */
#include "lpw.h"

void run_dense(void)
{
	region_fill(region_map((size_t)O.mib * (1 << 20) / page_size, O.seed, "dense"));
	main_ready();
	idle_loop(NULL);
}

void run_sparse(void)
{
	struct region *r = region_map((size_t)O.mib * (1 << 20) / page_size, O.seed, "sparse");

	/* Unfilled pages are never touched, so they stay unpopulated until verify reads them. */
	r->every = O.every;
	region_fill(r);
	main_ready();
	idle_loop(NULL);
}
