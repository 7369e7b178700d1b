"""Weight sparsity: single weights set to zero in the sites' linears, unstructured or N:M.

Which linears (`targets`), which weights of a score matrix (`selection`), by which criterion (`criteria`:
magnitude, Wanda, SparseGPT, registered by name), block by block for the data-driven ones (`blockwise`);
`sparsify` drives it, `masks` keeps the zeros through training, and `semi_structured` exports 2:4 for GPUs.
"""
