//! Herd shapes and their distances: the SPEC's five servers, a grid, hop counts by
//! breadth-first search, and which servers are farthest from an origin. Pure.

use std::collections::VecDeque;

use herd_test_support::harness::{link_indices, SPEC_LINKS, SPEC_SERVERS};

/// Hop counts from `from` to every server (None: unreachable), by breadth-first search.
pub fn distances(n: usize, links: &[(usize, usize)], from: usize) -> Vec<Option<usize>> {
    let mut dist = vec![None; n];
    dist[from] = Some(0);
    let mut queue = VecDeque::from([from]);
    while let Some(at) = queue.pop_front() {
        let d = dist[at].unwrap_or(0);
        for &(a, b) in links {
            let next = if a == at {
                b
            } else if b == at {
                a
            } else {
                continue;
            };
            if dist[next].is_none() {
                dist[next] = Some(d + 1);
                queue.push_back(next);
            }
        }
    }
    dist
}

/// The most hops from `from` to any server; `None` when one cannot be reached.
pub fn eccentricity(n: usize, links: &[(usize, usize)], from: usize) -> Option<usize> {
    let hops: Option<Vec<usize>> = distances(n, links, from).into_iter().collect();
    hops?.into_iter().max()
}

/// The SPEC's five-server herd (section 4).
pub fn five_servers() -> (Vec<String>, Vec<(usize, usize)>) {
    let names: Vec<String> = SPEC_SERVERS.iter().map(|s| s.to_string()).collect();
    let links = link_indices(&names, &SPEC_LINKS).unwrap_or_default();
    (names, links)
}

/// A `rows` x `cols` grid named `G{r}x{c}`: server (r, c) links to (r, c + 1) and (r + 1, c).
pub fn grid(rows: usize, cols: usize) -> (Vec<String>, Vec<(usize, usize)>) {
    let names = (0..rows * cols)
        .map(|i| format!("G{}x{}", i / cols, i % cols))
        .collect();
    let mut links = Vec::new();
    for r in 0..rows {
        for c in 0..cols {
            let i = r * cols + c;
            if c + 1 < cols {
                links.push((i, i + 1));
            }
            if r + 1 < rows {
                links.push((i, i + cols));
            }
        }
    }
    (names, links)
}

/// A `rows` x `cols` cylinder named `C{r}x{c}`: each row a ring ((r, c) links to (r, c + 1),
/// the last back to the first), and (r, c) to (r + 1, c). Degree 3 in the first and last
/// rows, 4 elsewhere; diameter `rows - 1 + cols / 2`.
pub fn cylinder(rows: usize, cols: usize) -> (Vec<String>, Vec<(usize, usize)>) {
    let names = (0..rows * cols)
        .map(|i| format!("C{}x{}", i / cols, i % cols))
        .collect();
    let mut links = Vec::new();
    for r in 0..rows {
        for c in 0..cols {
            let i = r * cols + c;
            links.push((i, r * cols + (c + 1) % cols));
            if r + 1 < rows {
                links.push((i, i + cols));
            }
        }
    }
    (names, links)
}

/// The servers farthest from `origin`, as positions among the others (every server but the
/// origin, in order), and their hop count; with no links known, every other server and `None`.
pub fn farthest(n: usize, links: &[(usize, usize)], origin: usize) -> (Option<usize>, Vec<usize>) {
    let dist = distances(n, links, origin);
    let others: Vec<usize> = (0..n).filter(|&i| i != origin).collect();
    let far = others.iter().filter_map(|&i| dist[i]).max();
    let positions = others
        .iter()
        .enumerate()
        .filter(|&(_, &i)| links.is_empty() || dist[i] == far)
        .map(|(k, _)| k)
        .collect();
    (far.filter(|_| !links.is_empty()), positions)
}
