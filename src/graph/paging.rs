//! Following `@odata.nextLink`: the one loop every listing uses.
//!
//! Graph pages a listing by handing back a whole URL to fetch next, until a page has none.
//! [`Pager`] holds where a listing stands (first page, a next link, or done), so callers that
//! store the link between pages (a resumable ingestion) and callers that simply want every item
//! share the same loop.

use std::future::Future;

use crate::model::Page;

/// Where a listing stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cursor {
    /// Nothing fetched yet: the next fetch asks for the first page.
    Start,
    /// The next fetch follows this `@odata.nextLink`.
    Next(String),
    /// The last page had no next link.
    Done,
}

/// Walks a listing page by page. `fetch` gets `None` for the first page and the previous page's
/// `@odata.nextLink` after that; it is the caller's request (and checks the link's origin).
pub struct Pager<T, F> {
    fetch: F,
    cursor: Cursor,
    /// A first page fetched before the walk began (e.g. to check a query), served first.
    ready: Option<Page<T>>,
}

impl<T, E, F, Fut> Pager<T, F>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<Page<T>, E>>,
{
    /// A walk from the first page.
    pub fn new(fetch: F) -> Self {
        Pager {
            fetch,
            cursor: Cursor::Start,
            ready: None,
        }
    }

    /// A walk that goes on from a stored next link (`None`: from the first page).
    pub fn resume(next_link: Option<String>, fetch: F) -> Self {
        Pager {
            fetch,
            cursor: next_link.map_or(Cursor::Start, Cursor::Next),
            ready: None,
        }
    }

    /// A walk that is already over: [`Pager::next_page`] gives `None` without fetching.
    pub fn finished(fetch: F) -> Self {
        Pager {
            fetch,
            cursor: Cursor::Done,
            ready: None,
        }
    }

    /// Serves `page` as the first page instead of fetching it (only when the walk is at its
    /// start; a resumed walk ignores it).
    pub fn with_first_page(mut self, page: Option<Page<T>>) -> Self {
        if self.cursor == Cursor::Start {
            self.ready = page;
        }
        self
    }

    /// The next page, or `None` when the listing is over. After an error the cursor has not
    /// moved, so calling again retries the same page.
    pub async fn next_page(&mut self) -> Result<Option<Page<T>>, E> {
        let page = match (self.ready.take(), &self.cursor) {
            (Some(page), _) => page,
            (None, Cursor::Done) => return Ok(None),
            (None, Cursor::Start) => (self.fetch)(None).await?,
            (None, Cursor::Next(link)) => (self.fetch)(Some(link.clone())).await?,
        };
        self.cursor = match &page.next_link {
            Some(link) => Cursor::Next(link.clone()),
            None => Cursor::Done,
        };
        Ok(Some(page))
    }

    /// Every remaining item of the listing, in order.
    pub async fn collect_all(mut self) -> Result<Vec<T>, E> {
        let mut out = Vec::new();
        while let Some(page) = self.next_page().await? {
            out.extend(page.value);
        }
        Ok(out)
    }
}
