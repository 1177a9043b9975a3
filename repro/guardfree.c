/* Bad frees near sampled objects, one per run (argv[1] picks), to read the sentences. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
	int k = atoi(argv[1]);
	size_t n = 40;
	char *p = malloc(n);
	switch (k) {
	case 0: free(p - 1); break;
	case 1: free(p - 16); break;
	case 2: free(p + n); break;
	case 3: free(p + n + 100); break;
	case 4: free(p + 8); break;
	case 5: free(p); free(p); break;
	case 6: for (int i = 0; i < 50; i++) free(p - 1); break;
	case 7: free(p - 4096); break;
	case 8: free(p + 4096); break;
	case 9: free(p + 2 * 4096); break;
	}
	return 0;
}
