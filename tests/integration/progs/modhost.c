/*
 * modhost LIB MODE: dlopen LIB, damage its file in place as MODE says (the
 * section or string tables, which nothing maps, so the running code is
 * untouched), then have it make an out-of-bounds read.  The report reads the
 * damaged file for symbols; the program must go on and print "done".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void put(int fd, const void *p, size_t n, off_t at)
{
	if (pwrite(fd, p, n, at) != (ssize_t)n) {
		perror("pwrite");
		exit(2);
	}
}

int main(int argc, char **argv)
{
	const char *path = argv[1], *mode = argv[2];
	void *h = dlopen(path, RTLD_NOW);
	if (!h) {
		printf("dlopen: %s\n", dlerror());
		return 2;
	}
	void (*bug)(void) = (void (*)(void))dlsym(h, "lib_exported_oob");
	int fd = open(path, O_RDWR);
	Elf64_Ehdr eh;
	Elf64_Shdr sh[64];
	struct stat st;
	if (fd < 0 || pread(fd, &eh, sizeof(eh), 0) != sizeof(eh) || eh.e_shnum > 64 ||
	    pread(fd, sh, sizeof(sh[0]) * eh.e_shnum, (off_t)eh.e_shoff) < 0 || fstat(fd, &st)) {
		perror(path);
		return 2;
	}
	int symtab = -1;
	for (int i = 0; i < eh.e_shnum; i++)
		if (sh[i].sh_type == SHT_SYMTAB)
			symtab = i;
	int strtab = symtab >= 0 ? (int)sh[symtab].sh_link : -1;
	/* Offsets whose sum with the size wraps around to a small number. */
	const uint64_t wrap = (uint64_t)0 - 0x100000;
	if (strcmp(mode, "shoff") == 0) {
		eh.e_shoff = wrap;
		eh.e_shnum = 0x100000 / sizeof(Elf64_Shdr) + 1;
		put(fd, &eh, sizeof(eh), 0);
	} else if (strcmp(mode, "phoff") == 0) {
		eh.e_phoff = wrap;
		eh.e_phnum = 0x100000 / sizeof(Elf64_Phdr) + 1;
		put(fd, &eh, sizeof(eh), 0);
	} else if (strcmp(mode, "symtab") == 0 || strcmp(mode, "strtab") == 0) {
		int i = mode[1] == 'y' ? symtab : strtab;
		sh[i].sh_offset = wrap;
		sh[i].sh_size = 0x100000 + sizeof(Elf64_Sym);
		put(fd, &sh[i], sizeof(sh[i]), (off_t)(eh.e_shoff + (uint64_t)i * sizeof(sh[i])));
	} else if (strcmp(mode, "unterminated") == 0) {
		/* The string table moved to the end of a file of whole pages, with no NUL in it. */
		off_t end = (st.st_size + 4095) / 4096 * 4096 + 4096;
		size_t n = (size_t)(end - st.st_size);
		char *junk = malloc(n);
		memset(junk, 'A', n);
		put(fd, junk, n, st.st_size);
		sh[strtab].sh_offset = (uint64_t)st.st_size;
		sh[strtab].sh_size = n;
		put(fd, &sh[strtab], sizeof(sh[0]),
		    (off_t)(eh.e_shoff + (uint64_t)strtab * sizeof(sh[0])));
	}
	close(fd);
	bug();
	printf("done\n");
	return 0;
}
