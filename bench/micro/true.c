/* The trivial program of bench/startup_bench.py: exec, start, exit; it never allocates. */
int main(void)
{
	return 0;
}
